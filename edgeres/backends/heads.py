"""Non-logit heads: a softmax (or sigmoid) at a classifier's output, kept out of int8.  HEAVY layer.

Quantized to int8, a softmax's probabilities come in steps of 1/256: near the top, classes tie and the
top-1 falls to the lowest index, so agreement with float32 drops for reasons that have nothing to do with
the layers (a ResNet-8 with a softmax head lost 0.15 points this way that no float layer won back).  So
the int8 model is built from the *logits* (the same network without its final activation), and the
activation is appended in float32: int8 logits -> DEQUANTIZE -> SOFTMAX (TFLite), or the float output of
the quantized graph -> Softmax (ONNX).  The outputs are probabilities as before, now continuous.

A target that needs a full-integer TFLite model (the Edge TPU) cannot take a float op after the body, and an
int8 softmax would tie.  So there the model outputs the int8 logits, and the activation is applied on the
host: edgeres' own validation does it (``Runner.host_activation``, from the report), and the app must (the
bundle's README says so).  The report's artifact details say which was done (``head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeres.core.runtime import HOST_ACTIVATIONS

ACTIVATIONS = tuple(HOST_ACTIVATIONS)  # the activations a model may end in, and the host can apply after it


@dataclass(frozen=True)
class Head:
    activation: str   # "softmax" | "sigmoid"
    logits: Any       # keras.Model: the same network without its final activation
    layer: str        # the Keras layer whose activation it was

    def describe(self, kept_in_float: bool) -> dict:
        if kept_in_float:
            how = f"int8 logits, dequantized; {self.activation} in float32 after them (top-1 never ties)"
            return {"activation": self.activation, "layer": self.layer, "float_activation": True, "handling": how}
        how = (f"{self.activation} left out of the model (the target needs a full-integer model): it outputs int8 "
               f"logits, and the host applies the {self.activation} (edgeres does when it validates; an app "
               f"must too; the top-1 is the largest logit either way)")
        return {"activation": self.activation, "layer": self.layer, "float_activation": False,
                "host_activation": self.activation, "handling": how}


def split_head(model) -> Head | None:
    """The model's final softmax/sigmoid and its logits model, or None for a logits head."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.Model):  # Input -> preprocessing -> keras.applications.X(...): look inside
        return _split_nested(model, last)
    kind = _activation_name(last)
    if kind not in ACTIVATIONS:
        return None
    try:
        if type(last).__name__ in ("Softmax", "Activation"):
            if isinstance(last, keras.layers.Softmax) and getattr(last, "axis", -1) not in (-1, 1):
                return None  # a softmax over another axis is not a classifier head
            logits_out = last.input
        else:  # Dense / Conv with activation="softmax": the same layer, linear
            cfg = {**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"}
            clone = type(last).from_config(cfg)
            logits_out = clone(last.input)
            clone.set_weights(last.get_weights())
        logits = keras.Model(model.inputs, logits_out, name=f"{model.name}_logits")
    except (AttributeError, ValueError, TypeError):  # a nested or multi-node last layer: leave the model be
        return None
    return Head(kind, logits, last.name)


def _split_nested(model, inner) -> Head | None:
    """The head of a model whose last layer is a whole model, called once on one tensor."""
    import keras

    try:
        if len(inner.inputs) != 1 or len(inner.outputs) != 1 or len(inner._inbound_nodes) != 1:
            return None
        head = split_head(inner)
        if head is None:
            return None
        fed = inner._inbound_nodes[0].input_tensors[0]  # the outer tensor the inner model was called on
        logits = keras.Model(model.inputs, head.logits(fed), name=f"{model.name}_logits")
    except (AttributeError, ValueError, TypeError, IndexError):
        return None
    return Head(head.activation, logits, f"{inner.name}/{head.layer}")


def _activation_name(layer) -> str | None:
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    act_name = getattr(act, "__name__", None) or (act if isinstance(act, str) else None)
    return act_name if act_name in ACTIVATIONS else None


def tflite_tail(data: bytes, activation: str) -> bytes:
    """Append DEQUANTIZE (for an int8 output) and a float32 SOFTMAX/LOGISTIC to a TFLite model."""
    from edgeres.core import tflite_edit as tfl
    from edgeres.core.tflite_schema import schema

    s = schema()
    m = tfl.load(data)
    g = m.subgraphs[0]
    if activation == "softmax":
        tfl.append_float_tail(m, g, s.BuiltinOperator.SOFTMAX, 1, s.BuiltinOptions.SoftmaxOptions,
                              tfl.options(s.SoftmaxOptionsT(), beta=1.0))
    else:
        tfl.append_float_tail(m, g, s.BuiltinOperator.LOGISTIC, 1)
    return tfl.pack(m)


def onnx_tail(data: bytes, activation: str) -> bytes:
    """Append Softmax(axis=-1)/Sigmoid to an ONNX model's (float) output, keeping the output's name."""
    import onnx
    from onnx import helper

    m = onnx.load_model_from_string(data)
    g = m.graph
    name = g.output[0].name
    logits = f"{name}_logits"
    for node in g.node:
        node.output[:] = [logits if o == name else o for o in node.output]
        node.input[:] = [logits if i == name else i for i in node.input]
    attrs = {"axis": -1} if activation == "softmax" else {}
    g.node.append(helper.make_node("Softmax" if activation == "softmax" else "Sigmoid", [logits], [name],
                                   name=f"edgeres_{activation}", **attrs))
    return m.SerializeToString()
