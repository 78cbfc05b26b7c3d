"""Exact Keras rewrites that make the int8 TFLite model more precise.  HEAVY layer (Keras).

A BatchNormalization that does not follow a convolution (pre-activation ResNet v2's BN-ReLU-conv, a BN
after a residual Add, a BN on the input) cannot be folded into weights, and TFLiteConverter lowers it to
MUL then ADD: two int8 ops, each rounding its output to a per-tensor int8 grid.  The same affine map is a
1x1 DepthwiseConv2D (one weight per channel, the BN's bias): one int8 op whose per-channel weight scale
holds each channel's factor exactly (a single weight per channel quantizes to +-127) and whose int32 bias
holds the shift, so the output is rounded once.  Keras' Normalization layer (``(x - mean) / std`` per
channel, inside EfficientNet and many user models) is lowered to SUB then MUL and gets the same treatment.
The rewrite is checked to compute the same function in float before it is used; when it cannot be built or
checked, the model is used as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeres.backends.keras_io import flat_layers

log = logging.getLogger(__name__)

_FOLDS_INTO = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D", "Conv2DTranspose")


def standalone_batchnorm_as_depthwise(model: Any, sample: np.ndarray | None = None) -> tuple[Any, list[str]]:
    """``model`` with each standalone 4-D BatchNormalization, and each per-channel Normalization layer (BN's
    frozen-statistics sibling), replaced by the equal 1x1 DepthwiseConv2D (keeping its name), and the names
    replaced; ``(model, [])`` when there is none or the check fails.

    ``sample``: a few input images the rewritten model must reproduce (else a fixed random batch)."""
    import keras

    targets = {layer.name for layer in flat_layers(model) if _standalone(layer)}
    if not targets:
        return model, []

    def clone(layer):
        if layer.name in targets:
            return _as_depthwise(keras, layer)
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):  # a BN's call takes training/mask; the depthwise conv takes neither
        return layer(*args) if layer.name in targets and not isinstance(layer, keras.layers.BatchNormalization) \
            else layer(*args, **kwargs)

    try:
        new = keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
        old_layers, new_layers = ({lay.name: lay for lay in flat_layers(m)  # the clone's InputLayer gets
                                   if not isinstance(lay, keras.layers.InputLayer)}  # another name
                                  for m in (model, new))
        if sorted(old_layers) != sorted(new_layers) or len(new_layers) != len(list(flat_layers(new))) - 1:
            raise ValueError("the clone's layers are not the model's (or two layers share a name)")
        for name, old in old_layers.items():
            if name not in targets and old.weights:
                new_layers[name].set_weights(old.get_weights())
        x = sample if sample is not None else np.random.default_rng(0).uniform(
            0, 255, (4, *model.input_shape[1:])).astype(np.float32)
        want, got = (np.asarray(m(x[:8], training=False), np.float64) for m in (model, new))
        if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(float(np.abs(want).max()), 1.0)):
            raise ValueError(f"outputs differ by up to {float(np.abs(got - want).max()):.3g}")
    except Exception as exc:  # an architecture the rewrite does not know: keep the model as it is
        log.debug("standalone BatchNormalization kept as MUL+ADD: %s", exc)
        return model, []
    return new, sorted(targets)


def _standalone(layer) -> bool:
    """A BatchNormalization over the channels of a 4-D tensor that TFLiteConverter cannot fold into the
    layer before it (there is none, it is no convolution, or its output goes elsewhere too), or a
    Normalization layer over the channels (lowered to SUB+MUL: two roundings, as MUL+ADD)."""
    if type(layer).__name__ == "Normalization" and len(layer._inbound_nodes) == 1:
        axes = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
        if layer.invert or axes not in ((-1,), (3,)) or len(layer.input.shape) != 4:
            return False
        # With one mean for every channel the SUB's output grid is its input's, shifted: it rounds nothing,
        # and the rewrite gains nothing (measured: a grayscale model lost 0.2 dB).  Only different means
        # widen the SUB's range beyond each channel's.
        return len(np.unique(np.asarray(layer.mean, np.float64))) > 1
    if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
        return False
    axis = layer.axis if isinstance(layer.axis, int) else (list(layer.axis) + [None])[0]
    shape = layer.input.shape
    if len(shape) != 4 or axis not in (-1, 3):
        return False
    parents = layer._inbound_nodes[0].parent_nodes
    if len(parents) != 1 or parents[0].operation is None:
        return True
    producer = parents[0].operation
    return type(producer).__name__ not in _FOLDS_INTO or len(producer._outbound_nodes) != 1


def _as_depthwise(keras, bn):
    channels = int(bn.input.shape[-1])
    if type(bn).__name__ == "Normalization":  # (x - mean) / max(sqrt(var), epsilon), as Keras computes it
        mean = np.asarray(bn.mean, np.float64).reshape(-1) * np.ones(channels)
        std = np.sqrt(np.asarray(bn.variance, np.float64).reshape(-1) * np.ones(channels))
        factor = 1.0 / np.maximum(std, keras.config.epsilon())
        return _depthwise(keras, bn, factor, -mean * factor)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros(channels)
    mean, var = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
    factor = gamma / np.sqrt(var + bn.epsilon)
    return _depthwise(keras, bn, factor, beta - mean * factor)


def _depthwise(keras, layer, factor: np.ndarray, bias: np.ndarray):
    """The 1x1 DepthwiseConv2D ``x * factor + bias`` per channel, named as ``layer``."""
    dw = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
    dw.build(tuple(layer.input.shape))
    dw.set_weights([factor.reshape(1, 1, -1, 1).astype(np.float32), bias.astype(np.float32)])
    return dw
