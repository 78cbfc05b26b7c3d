"""A BatchNormalization no convolution absorbs, or a Normalization layer, built as one int8 DEPTHWISE_CONV_2D
instead of MUL+ADD (SUB+MUL).

Real Keras, TFLiteConverter and LiteRT on small models fed the embedded digits.  The rewrite must compute
the same function in float, touch only the BNs the converter cannot fold, and make the int8 model more
precise where MUL+ADD rounds twice.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CALIBRATION, invoke

TRAIN, TEST = CALIBRATION / "digits-train.npz", CALIBRATION / "digits-test.npz"


def _set_bn(layer, rng, mean_offset: float = 0.0) -> None:
    c = layer.gamma.shape[0]
    layer.set_weights([rng.uniform(-2.0, 2.0, c), rng.normal(0, 1, c),  # negative factors too
                       mean_offset + rng.normal(0, 1, c), rng.uniform(0.2, 4.0, c)])


def _preact_model(seed: int = 0):
    """Input BN, pre-activation blocks (BN-ReLU-conv), a BN after a residual Add, a conv-BN pair, and a BN on
    the pooled vector: four standalone 4-D BNs, one folded, one 2-D."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    i = keras.Input((8, 8, 1))
    x = layers.Rescaling(1 / 255.0)(i)
    x = layers.BatchNormalization(name="bn_input")(x)
    x = layers.Conv2D(8, 3, padding="same", name="stem")(x)
    x = layers.BatchNormalization(name="bn_folded")(x)  # directly after a conv used once: folded
    y = layers.ReLU()(layers.BatchNormalization(name="bn_pre1")(x))
    y = layers.Conv2D(8, 3, padding="same", name="conv1")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.ReLU()(layers.BatchNormalization(name="bn_post_add")(x))
    c = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = layers.BatchNormalization(name="bn_shared_conv")(c)  # conv2's output also feeds conv2_side
    x = layers.Add(name="add2")([x, layers.Conv2D(8, 1, name="conv2_side")(c)])
    v = layers.GlobalAveragePooling2D()(x)
    v = layers.BatchNormalization(name="bn_vector")(v)  # 2-D: left to the converter
    model = keras.Model(i, layers.Dense(10, name="logits")(v))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            _set_bn(layer, rng)
    return model


def test_only_standalone_4d_batchnorms_are_replaced_and_the_function_is_the_same():
    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    model = _preact_model()
    x = np.load(TEST)["x"][:64].astype(np.float32)
    new, names = standalone_batchnorm_as_depthwise(model, x[:8])
    assert names == ["bn_input", "bn_post_add", "bn_pre1", "bn_shared_conv"]
    assert {type(layer).__name__ for layer in new.layers if layer.name in names} == {"DepthwiseConv2D"}
    assert type(new.get_layer("bn_folded")).__name__ == "BatchNormalization"
    assert type(new.get_layer("bn_vector")).__name__ == "BatchNormalization"
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(new.predict(x, verbose=0), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the original model is untouched and still usable
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)


def test_a_model_without_standalone_batchnorm_is_returned_as_it_is():
    import keras
    from keras import layers

    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    i = keras.Input((8, 8, 1))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3)(i)))
    model = keras.Model(i, layers.Dense(10)(layers.Flatten()(x)))
    new, names = standalone_batchnorm_as_depthwise(model)
    assert new is model and names == []


def test_channels_first_batchnorm_is_left_alone():
    import keras
    from keras import layers

    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    i = keras.Input((8, 8, 1))
    x = layers.BatchNormalization(axis=1)(layers.Add()([i, i]))  # normalises rows, not channels
    model = keras.Model(i, layers.Dense(10)(layers.Flatten()(x)))
    assert standalone_batchnorm_as_depthwise(model)[1] == []


def _int8_sqnr(model, calib, x, ref) -> tuple[float, list[str]]:
    from edgeres.backends.keras_io import layer_types
    from edgeres.backends.tflite_quant import TFLiteQuantizer
    from edgeres.core.runtime import tflite_module
    from edgeres.quant.recipes import resolve_recipe

    data, _ = TFLiteQuantizer(model, calib, layer_types(model), "float32").quantize(
        resolve_recipe("stock").for_backend("tflite"))
    interp = tflite_module()[0].Interpreter(model_content=data)
    ops = [op["op_name"] for op in interp._get_ops_details()]
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    got = interp.get_tensor(out["index"]).astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((got - ref) ** 2))), ops


def test_int8_model_rounds_once_where_mul_add_rounded_twice():
    """A BN that removes a large offset: MUL's output (before the shift) spans a wider range than the BN's
    output, and rounding it to int8 adds noise about as large as the BN input's own, which the one depthwise
    op never adds (removing one of two equal noises is 3 dB; this model gains about 0.85)."""
    import keras
    from keras import layers

    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    keras.utils.set_random_seed(1)
    i = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(layers.Rescaling(1 / 16.0)(i))
    x = layers.Add()([x, layers.Conv2D(8, 1, name="side")(x)])
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    model = keras.Model(i, layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D()(
        layers.Conv2D(8, 3, padding="same", name="head_conv")(x))))
    w, b = model.get_layer("stem").get_weights()
    model.get_layer("stem").set_weights([w, b + 40.0])  # every channel sits near 40-80 before the BN
    _set_bn(model.get_layer("bn"), np.random.default_rng(1), mean_offset=60.0)
    calib = np.load(TRAIN)["x"][:128].astype(np.float32)
    x = np.load(TEST)["x"][:200].astype(np.float32)
    ref = model.predict(x, verbose=0).astype(np.float64)
    new, names = standalone_batchnorm_as_depthwise(model, calib[:8])
    assert names == ["bn"]
    plain, plain_ops = _int8_sqnr(model, calib, x, ref)
    folded, folded_ops = _int8_sqnr(new, calib, x, ref)
    assert "MUL" in plain_ops and "DEPTHWISE_CONV_2D" not in plain_ops
    assert "DEPTHWISE_CONV_2D" in folded_ops and "MUL" not in folded_ops
    assert folded >= plain + 0.5, (plain, folded)


def _rgb(x: np.ndarray) -> np.ndarray:
    """The digits as three unlike colour channels."""
    return np.concatenate([x, 0.7 * x + 40.0, 255.0 - x], axis=-1).astype(np.float32)


def _normalized_model(axis=-1, invert=False, mean=(0.485, 0.456, 0.406)):
    """Rescaling then a Normalization layer with ImageNet's per-channel mean and variance in the model (as
    EfficientNet and the shared ResNet-20 have), then a small conv net."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    i = keras.Input((8, 8, 3))
    x = layers.Rescaling(1 / 255.0, name="rescale")(i)
    stats = {"mean": list(mean), "variance": [0.052, 0.050, 0.051]} if axis == -1 else \
        {"mean": 0.45, "variance": 0.05}
    x = layers.Normalization(axis=axis, invert=invert, name="normalize", **stats)(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    return keras.Model(i, layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D()(x)))


def test_a_normalization_layer_is_one_depthwise_op_instead_of_sub_and_mul():
    """Keras' Normalization is lowered to SUB then MUL, each rounding to int8 (the SUB's output spans the union
    of the channels' shifted ranges, a coarser grid than the input's); as a 1x1 depthwise conv it rounds once.
    The same function in float, and a more faithful int8 model."""
    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    model = _normalized_model()
    calib, x = _rgb(np.load(TRAIN)["x"][:128]), _rgb(np.load(TEST)["x"][:200])
    ref = model.predict(x, verbose=0).astype(np.float64)
    new, names = standalone_batchnorm_as_depthwise(model, calib[:8])
    assert names == ["normalize"] and type(new.get_layer("normalize")).__name__ == "DepthwiseConv2D"
    np.testing.assert_allclose(new.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    plain, plain_ops = _int8_sqnr(model, calib, x, ref)
    folded, folded_ops = _int8_sqnr(new, calib, x, ref)
    assert "SUB" in plain_ops and "DEPTHWISE_CONV_2D" not in plain_ops
    assert "DEPTHWISE_CONV_2D" in folded_ops and "SUB" not in folded_ops
    assert folded >= plain + 0.2, (plain, folded)  # 41.5 -> 42.0 dB here


@pytest.mark.parametrize("kw", [{"invert": True}, {"axis": None}, {"mean": (0.45, 0.45, 0.45)}])
def test_an_inverting_global_or_one_mean_normalization_is_left_alone(kw):
    """One mean for every channel: the SUB only shifts its input's grid and rounds nothing."""
    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise

    assert standalone_batchnorm_as_depthwise(_normalized_model(**kw))[1] == []


@pytest.mark.slow
def test_convert_reports_the_rewrite_and_keeps_the_tflite_int8_model_faithful(tmp_path):
    model = _preact_model()
    model.save(tmp_path / "preact.keras")
    out = tmp_path / "run"
    result = invoke("convert", tmp_path / "preact.keras", "--int8", "--calib", TRAIN, "--data", TEST,
                    "--calib-size", "128", "--val-size", "300", "--runs", "50", "--recipe", "default", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    tfl = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert tfl["details"]["batchnorm_as_depthwise"] == ["bn_input", "bn_post_add", "bn_pre1", "bn_shared_conv"]
    assert tfl["details"]["full_integer"] is True
    assert tfl["agreement"] >= 95.0 and tfl["sqnr_db"] >= 25.0, tfl
    onnx = next(a for a in report["artifacts"] if a["name"] == "onnx_int8")
    assert "batchnorm_as_depthwise" not in onnx["details"]  # the ONNX model is built from the model as it is


# ------------------------------------------------------------- TFLite bias correction through fused clamps


def test_int8_clamps_follow_the_fused_activation():
    from types import SimpleNamespace

    from edgeres.core.tflite_edit import int8_clamps as _int8_clamps
    from edgeres.core.tflite_schema import schema

    acts = schema().ActivationFunctionType
    out = SimpleNamespace(quantization=SimpleNamespace(scale=[6.0 / 255], zeroPoint=[-128]))
    op = lambda act: SimpleNamespace(builtinOptions=SimpleNamespace(fusedActivationFunction=act))  # noqa: E731
    assert _int8_clamps(op(acts.NONE), out) == (-128, 127)
    assert _int8_clamps(op(acts.RELU), out) == (-128, 127)
    assert _int8_clamps(op(acts.RELU6), out) == (-128, 127)  # the range is [0, 6]: both ends at int8's
    wide = SimpleNamespace(quantization=SimpleNamespace(scale=[0.1], zeroPoint=[-28]))  # range [-10, 15.5]
    assert _int8_clamps(op(acts.RELU), wide) == (-28, 127)
    assert _int8_clamps(op(acts.RELU6), wide) == (-28, 32)
    assert _int8_clamps(op(acts.RELU_N1_TO_1), wide) == (-38, -18)
    assert _int8_clamps(SimpleNamespace(builtinOptions=None), wide) == (-128, 127)  # no options: no clamp


def test_empirical_bias_correction_matches_relu_outputs_to_float():
    """The mean of each ReLU layer's int8 output (what the next layer sees) moves onto the float model's, per
    channel, on the calibration images: before, only layers no ReLU clamps were corrected empirically.  The
    untrained layers' biases are all zero, which the converter stores in one shared buffer: shifting one
    layer's bias must not move the others'."""
    import keras
    from keras import layers

    from edgeres.backends.keras_io import layer_types
    from edgeres.backends.tflite_quant import TFLiteQuantizer
    from edgeres.quant.recipes import resolve_recipe

    keras.utils.set_random_seed(2)
    i = keras.Input((8, 8, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(layers.Rescaling(1 / 255.0)(i))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    model = keras.Model(i, layers.Dense(10, bias_initializer="ones", name="logits")(  # no bias: nothing to shift
        layers.GlobalAveragePooling2D()(x)))
    calib = np.load(TRAIN)["x"][:200].astype(np.float32)
    q = TFLiteQuantizer(model, calib, layer_types(model), "float32")
    recipe = resolve_recipe("default").for_backend("tflite")
    corrected, details = q.quantize(recipe)
    plain, _ = q.quantize(recipe.replace(bias_correction=False))
    assert "empirical on 4 layers' outputs" in details["bias_correction"], details["bias_correction"]
    want = q.layer_outputs(None, calib)
    before, after = q.layer_outputs(plain, calib), q.layer_outputs(corrected, calib)

    def err(out, layer):  # mean over channels of |int8 channel mean - float channel mean|
        return np.abs(out[layer].mean((0, 1, 2)) - want[layer].mean((0, 1, 2))).mean()

    for layer in ("c1", "c2", "c3"):  # the logits' mean errors are at the noise floor of 200 images already
        assert err(after, layer) < 0.5 * err(before, layer), (layer, err(before, layer), err(after, layer))


def test_a_prefix_computes_its_tensor_as_the_whole_model_does():
    """tflite_edit.prefix (each layer-by-layer bias correction pass runs one): only the ops that feed the tensor,
    which becomes the only output, and the same values as the whole model's intermediate tensor; the model
    it was cut from is left whole."""
    import keras
    from keras import layers

    from edgeres.backends.keras_io import layer_types
    from edgeres.backends.tflite_quant import TFLiteQuantizer
    from edgeres.core import tflite_edit
    from edgeres.core.runtime import tflite_module
    from edgeres.quant.recipes import resolve_recipe

    keras.utils.set_random_seed(4)
    i = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(layers.Rescaling(1 / 255.0)(i))
    y = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    side = layers.Conv2D(8, 1, name="side")(x)  # not needed for c2's output
    model = keras.Model(i, layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D()(
        layers.Add()([y, side]))))
    calib = np.load(TRAIN)["x"][:64].astype(np.float32)
    q = TFLiteQuantizer(model, calib, layer_types(model), "float32")
    data, _ = q.quantize(resolve_recipe("stock").for_backend("tflite"))
    m = tflite_edit.load(data)
    g = m.subgraphs[0]
    outputs = [int(o) for op in g.operators for o in op.outputs]
    target = next(i for i in outputs if b"c2" in g.tensors[i].name)  # c2's output (not its int8 weights)
    before = tflite_edit.pack(m)
    cut = tflite_edit.prefix(m, target)
    assert tflite_edit.pack(m) == before  # the model itself is untouched
    cut_g = tflite_edit.load(cut).subgraphs[0]
    made = {int(o) for op in cut_g.operators for o in op.outputs}
    side = {i for i, t in enumerate(g.tensors) if b"side" in t.name or b"logits" in t.name}
    assert target in made and not made & side and len(cut_g.operators) < len(g.operators)
    assert list(cut_g.outputs) == [target]
    mod = tflite_module()[0]
    part = mod.Interpreter(model_content=cut)
    assert [d["index"] for d in part.get_output_details()] == [target]
    whole = mod.Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    for interp in (part, whole):
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], calib[:1])
        interp.invoke()
    np.testing.assert_array_equal(part.get_tensor(target), whole.get_tensor(target))
