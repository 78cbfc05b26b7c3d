"""Architectures outside the ResNet family: depthwise and separable convolutions, ReLU6, linear bottlenecks.

A robustness sweep on models the project never tuned for found that any Keras 3 ``DepthwiseConv2D``
crashed the report's MAC count, and that ONNX bias correction collapsed ReLU6 models (it compared the
int8 layer's pre-activation mean with the float ReLU6 output's) and MobileNet-style linear bottlenecks
(corrected all at once, a shift through a linear path was cancelled twice).  Real converters and
runtimes on a small MobileNetV2-style model trained briefly on the embedded digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, invoke

TRAIN, TEST = CALIBRATION / "digits-train.npz", CALIBRATION / "digits-test.npz"


def test_macs_are_counted_for_every_convolution_kind():
    import keras
    from keras import layers

    from edgeres.backends.keras_io import count_macs

    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same")(i)  # 8*8 * 3*3*3*4
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 8*8 * 3*3*4*2
    x = layers.SeparableConv2D(6, 3, strides=2, padding="same")(x)  # 4*4 * (3*3*8*1 + 1*1*8*6)
    x = layers.Conv2DTranspose(6, 2, strides=2)(x)  # every input pixel: 4*4 * 2*2*6*6
    x = layers.Conv2D(6, 3, groups=2, padding="same")(x)  # 8*8 * 3*3*3*6
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10)(x)  # 6*10
    model = keras.Model(i, out)
    expected = 64 * 108 + 64 * 72 + 16 * (72 + 48) + 16 * 144 + 64 * 162 + 60
    assert count_macs(model) == expected


def test_macs_are_unknown_rather_than_zero_without_countable_layers():
    import keras
    from keras import layers

    from edgeres.backends.keras_io import count_macs

    i = keras.Input((8, 8, 3))
    assert count_macs(keras.Model(i, layers.GlobalAveragePooling2D()(i))) is None


@pytest.fixture(scope="module")
def mobilenet_like(tmp_path_factory) -> Path:
    """Inverted residual blocks (1x1 expand + ReLU6, depthwise 3x3 + ReLU6, linear 1x1 project, Add)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)

    def block(x, expand: int, out: int, stride: int):
        y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(expand, 1, use_bias=False)(x)))
        y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
        y = layers.ReLU(6.0)(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(out, 1, use_bias=False)(y))  # linear bottleneck
        return layers.Add()([x, y]) if stride == 1 and x.shape[-1] == out else y

    i = keras.Input((8, 8, 1))
    x = layers.Rescaling(1 / 255.0)(i)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(x)))
    x = block(x, 32, 16, 1)
    x = block(x, 48, 24, 2)
    x = block(x, 72, 24, 1)
    x = block(x, 72, 24, 1)
    out = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return _trained(keras.Model(i, out), epochs=8, path=tmp_path_factory.mktemp("mobilenet-like") / "mnv2_like.keras")


def _trained(model, epochs: int, path: Path) -> Path:
    """``model`` trained on the embedded digits (logits, Adam) and saved to ``path``."""
    import keras

    d = np.load(TRAIN)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(d["x"].astype("float32"), d["y"], epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    return path


@pytest.mark.parametrize("budget, mode", [(None, "layer by layer"), (0.0, "all layers at once")])
def test_bias_correction_holds_on_relu6_and_linear_bottlenecks(mobilenet_like, tmp_path, monkeypatch, budget, mode):
    if budget is not None:  # in-process CLI: the budget is read when the conversion runs
        monkeypatch.setattr("edgeres.quant.stats.SEQUENTIAL_BIAS_MACS", budget)
    out = tmp_path / "run"
    result = invoke("convert", mobilenet_like, "--int8", "--recipe", "default", "--calib", TRAIN, "--data", TEST,
                    "--calib-size", "200", "--runs", "50", "--jobs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["macs"] > 0
    int8 = {a["name"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    onnx, tflite = int8["onnx_int8"], int8["tflite_int8"]
    assert mode in onnx["details"]["bias_correction"] and mode in tflite["details"]["bias_correction"]
    # Every layer with a bias is corrected in ONNX, the ReLU6 ones included (their ReLU6 folds into the Q):
    # the stem, 4 x (expand, depthwise, project) and the head.
    assert len(onnx["details"]["bias_corrected_layers"]) == 14
    assert sum(n.startswith("depthwise") for n in onnx["details"]["bias_corrected_layers"]) == 4
    if budget is None:
        # Before: the ONNX model agreed with float32 on 38-71% of such models' images, at SQNR near 0-10 dB.
        for artifact in (onnx, tflite):
            assert artifact["agreement"] >= 95.0, artifact
            assert artifact["sqnr_db"] >= 20.0, artifact


def _tiny(path: Path, *, dtype: str = "float32", softmax: bool = False) -> Path:
    import keras
    from keras import layers

    i = keras.Input((8, 8, 1), dtype=dtype)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255.0)(i))
    out = layers.Dense(10, activation="softmax" if softmax else None)(layers.GlobalAveragePooling2D()(x))
    keras.Model(i, out).save(path)
    return path


def test_a_model_with_an_integer_input_is_refused_before_converting(tmp_path):
    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    result = invoke("convert", _tiny(tmp_path / "u8.keras", dtype="uint8"), "--int8", "--calib", TRAIN,
                    "--data", TEST, "-o", out)
    assert_one_line_error(result, 5, "model input is uint8", "float32 input")
    assert not out.exists()


def test_converter_log_records_reach_stderr_without_logging_errors(tmp_path):
    """TensorFlow's logger, made while edgeres silenced the converters, kept the temporary stream."""
    import subprocess
    import sys

    model = _tiny(tmp_path / "softmax.keras", softmax=True)
    proc = subprocess.run([sys.executable, "-m", "edgeres", "convert", str(model), "--int8", "--calib", str(TRAIN),
                           "--data", str(TEST), "--calib-size", "64", "--val-size", "100", "--runs", "50",
                           "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_softmax_inside_a_nested_model_is_kept_in_float(tmp_path):
    """Input -> preprocessing -> a whole classifier as one layer (the keras.applications pattern)."""
    import keras
    from keras import layers

    inner_in = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inner_in)
    inner = keras.Model(inner_in, layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x)),
                        name="backbone")
    i = keras.Input((8, 8, 1))
    keras.Model(i, inner(layers.Rescaling(1 / 255.0)(i))).save(tmp_path / "nested.keras")
    out = tmp_path / "run"
    result = invoke("convert", tmp_path / "nested.keras", "--int8", "--calib", TRAIN, "--data", TEST,
                    "--calib-size", "64", "--val-size", "100", "--runs", "50", "--recipe", "default", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for a in report["artifacts"]:
        if a["precision"] == "int8":
            head = a["details"]["head"]
            assert head["activation"] == "softmax" and head["float_activation"], head
            assert head["layer"].startswith("backbone/")
    from edgeres.core.runtime import tflite_module

    interpreter = tflite_module()[0].Interpreter(model_path=str(out / "model_int8.tflite"))
    assert interpreter.get_output_details()[0]["dtype"] == np.float32  # probabilities, not int8 steps


@pytest.mark.parametrize("policy", ["mixed_float16", "float16"])
def test_a_half_precision_model_is_converted_in_float32_with_one_warning(tmp_path, policy):
    """A mixed_float16 policy from training (or a float16 model) has no TFLite half-precision kernels for
    its convolutions: it was refused as 'ops with no TFLite builtin kernel'."""
    import subprocess
    import sys

    import keras
    from keras import layers

    keras.config.set_dtype_policy(policy)
    try:
        i = keras.Input((8, 8, 1))
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255.0)(i))
        inner = keras.Sequential([layers.Dense(16, activation="relu")], name="inner")  # nested: widened too
        out = layers.Dense(10, dtype="float32")(inner(layers.GlobalAveragePooling2D()(x)))
        model = keras.Model(i, out)
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "half.keras")
    x = np.load(TEST)["x"][:100].astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0), np.float32)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edgeres", "convert", str(tmp_path / "half.keras"), "--int8",
                           "--calib", str(TRAIN), "--data", str(TEST), "--calib-size", "64", "--val-size", "100",
                           "--runs", "50", "--recipe", "default", "-o", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("edgeres: warning:")]
    assert len(warnings) == 1, proc.stderr
    assert "computes in float16 (" in warnings[0] and "and 3 more): converted in float32" in warnings[0]  # 4 layers
    report = json.loads((out / "report.json").read_text())
    fp32 = next(a for a in report["artifacts"] if a["name"] == "tflite_fp32")
    assert fp32["agreement"] == 100.0
    from edgeres.core.runtime import tflite_module

    interp = tflite_module()[0].Interpreter(model_path=str(out / "model_fp32.tflite"))
    interp.allocate_tensors()
    got = []
    for image in x:
        interp.set_tensor(interp.get_input_details()[0]["index"], image[None])
        interp.invoke()
        got.append(interp.get_tensor(interp.get_output_details()[0]["index"])[0])
    # the float32 model computes what the half-precision one does, within half precision's rounding
    np.testing.assert_allclose(np.array(got), expected, atol=0.05 * float(np.abs(expected).max()))


def test_a_model_with_two_outputs_is_a_shape_error_like_any_non_classifier_output(tmp_path):
    import keras
    from keras import layers

    from tests.conftest import assert_one_line_error

    i = keras.Input((8, 8, 1))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, padding="same")(i))
    keras.Model(i, [layers.Dense(10)(x), layers.Dense(4)(x)]).save(tmp_path / "two.keras")
    out = tmp_path / "run"
    result = invoke("convert", tmp_path / "two.keras", "--int8", "--calib", TRAIN, "-o", out)
    assert_one_line_error(result, 5, "1 inputs and 2 outputs", "single-output image classifiers")
    assert not out.exists()


# ------------------------------------------------------------------ layers outside the int8 kernels and exporters

@pytest.fixture(scope="module")
def norm_gelu_grouped(tmp_path_factory) -> Path:
    """A grouped convolution (RegNet, ResNeXt), the exact GELU (ConvNeXt, ViTs) and a LayerNormalization:
    tf2onnx could not export the first two, and LayerNormalization's NEG has no int8 TFLite kernel."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255.0)(i))
    x = layers.Conv2D(16, 3, padding="same", groups=2, activation="gelu", name="grouped")(x)
    x = layers.LayerNormalization(name="norm")(x)
    out = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return _trained(keras.Model(i, out), epochs=4, path=tmp_path_factory.mktemp("norm-gelu-grouped") / "model.keras")


def test_grouped_convolutions_and_the_exact_gelu_export_to_onnx_exactly(norm_gelu_grouped):
    import keras
    import onnx
    import onnxruntime as ort

    from edgeres.backends.base import get_format, resolve_settings
    from edgeres.devices.targets import resolve_target
    from edgeres.quant.recipes import resolve_recipe

    model = keras.models.load_model(norm_gelu_grouped)
    settings = resolve_settings(resolve_target("x86-64"), resolve_recipe("default"))
    data, _ = get_format("onnx").export_float(model, (8, 8, 1), settings)
    graph = onnx.load_model_from_string(data).graph
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 2 for a in n.attribute) for n in graph.node)
    assert any(n.op_type == "Erf" for n in graph.node)
    x = np.load(TEST)["x"][:32].astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4, rtol=1e-4)


def test_ops_without_an_int8_kernel_stay_in_float_and_the_report_names_them(norm_gelu_grouped, tmp_path):
    out = tmp_path / "run"
    result = invoke("convert", norm_gelu_grouped, "--int8", "--calib", TRAIN, "--data", TEST, "--calib-size", "200",
                    "--val-size", "300", "--runs", "50", "--jobs", "1", "--target", "x86-64", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    for name in ("tflite_fp32", "onnx_fp32"):
        assert arts[name]["agreement"] == 100.0, arts[name]
    tflite, onnx_ = arts["tflite_int8"]["details"], arts["onnx_int8"]["details"]
    # TFLite: LayerNormalization's NEG has no int8 kernel; ONNX Runtime: the GELU's Erf and the norm's Sqrt
    assert tflite["full_integer"] is False and "norm" in tflite["float_ops"]["NEG"], tflite
    assert "norm" in tflite["float_ops"]["RSQRT"], tflite  # the chain after the NEG stays float with it
    assert onnx_["full_integer"] is False and onnx_["float_ops"]["Erf"] == ["grouped"], onnx_
    assert "norm" in onnx_["float_ops"]["Sqrt"]
    notes = "\n".join(report["notes"])
    assert "tflite_int8: not full-integer" in notes and "onnx_int8: not full-integer" in notes
    # ONNX: the float chain after an op without an int8 kernel (the norm's mean, variance, rsqrt, scale and
    # shift; the GELU's erf and products) stays float up to the next matrix product, quantized once there
    import onnx

    graph = onnx.load(str(out / "model_int8.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    requantized = [producer[q.input[0]].name for q in graph.node
                   if q.op_type == "QuantizeLinear" and q.input[0] in producer]
    assert not [name for name in requantized if "/norm" in name or "/Gelu" in name], requantized
    for name in ("tflite_int8", "onnx_int8"):  # the islands cost little accuracy
        assert arts[name]["agreement"] >= 95.0, arts[name]


def test_a_full_integer_target_refuses_ops_without_an_int8_kernel_by_layer(norm_gelu_grouped, tmp_path):
    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    result = invoke("convert", norm_gelu_grouped, "--int8", "--calib", TRAIN, "--calib-size", "64",
                    "--target", "coral-edgetpu", "-o", out)
    assert_one_line_error(result, 6, "NEG (in norm)", "full-integer")
    assert not out.exists()


def test_an_integer_only_model_has_no_float_islands(default_run):
    """The audit reads what ONNX Runtime fused: the embedded default's int8 model runs integer throughout."""
    from edgeres.backends.onnx_subgraph import float_islands

    assert float_islands((default_run / "model_int8.onnx").read_bytes()) == []
    report = json.loads((default_run / "report.json").read_text())
    assert all("float_ops" not in a["details"] for a in report["artifacts"])


def test_the_float_chain_runs_from_each_island_to_the_next_matrix_product_or_data_move():
    """LayerNormalization then GELU, as both back ends lower them, on plain node ids."""
    from edgeres.core.graphs import float_chain

    kind = {"conv": "Conv", "mean": "ReduceMean", "sub": "Sub", "sq": "Mul", "var": "ReduceMean",
            "sqrt": "Sqrt", "rcp": "Reciprocal", "scale": "Mul", "shift": "Add", "reshape": "Reshape",
            "mm": "MatMul", "div": "Mul", "erf": "Erf", "one": "Add", "gelu": "Mul", "mm2": "MatMul",
            "side": "Add"}
    users = {"conv": ["mean", "sub", "side"], "mean": ["sub"], "sub": ["sq", "scale"], "sq": ["var"],
             "var": ["sqrt"], "sqrt": ["rcp"], "rcp": ["scale"], "scale": ["shift"], "shift": ["reshape"],
             "reshape": ["mm"], "mm": ["div", "gelu"], "div": ["erf"], "erf": ["one"], "one": ["gelu"],
             "gelu": ["mm2"], "side": ["mm2"]}
    order = list(kind)
    stops = {"Conv", "MatMul", "Reshape"}
    kept = float_chain(order, kind, users, islands=["mean", "sqrt", "erf"], stops=stops)
    # the norm up to the Reshape before the MatMul; the GELU: its erf, the ops after it, and x / sqrt(2),
    # which only feeds the erf; never a convolution, a matrix product, a data move, or an unrelated branch
    assert kept == ["mean", "sub", "sq", "var", "sqrt", "rcp", "scale", "shift", "div", "erf", "one", "gelu"]
    assert float_chain(order, kind, users, islands=[], stops=stops) == []
    assert float_chain(order, kind, users, islands=["mean"], stops=stops, never=["sub"]) == ["mean"]


def test_a_broken_layer_is_found_by_its_step_in_error_not_by_a_fixed_list():
    from edgeres.quant.adaptive import broken_layer

    order = ["a", "b", "c", "d", "e"]
    healthy = {"a": (40.0, 0), "b": (34.0, 0), "c": (30.0, 0), "d": (27.0, 0), "e": (26.0, 0)}
    assert broken_layer(healthy, order) is None  # error grows a few dB per layer
    broken = {**healthy, "c": (3.0, 0), "d": (2.5, 0), "e": (2.0, 0)}  # c breaks; d and e inherit it
    assert broken_layer(broken, order) == "c"
    assert broken_layer({**healthy, "a": (1.0, 0)}, order) == "a"  # nothing before it: an absolute floor


def test_a_layer_the_converter_breaks_is_kept_float_by_the_adaptive_default(tmp_path):
    """TFLite quantizes a SELU's EXP over the pre-activations' whole range: at about +-50 its negative branch
    (between -1 and 0) rounds to nothing, and every range method gives the same broken model (about 25 dB).
    The adaptive default finds the layer by its step in per-layer error and keeps it float."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255)(i))
    big = layers.Conv2D(16, 3, padding="same", name="big")
    h = layers.Activation("selu", name="selu")(big(h))
    c3 = layers.Conv2D(16, 3, padding="same", activation="relu")
    model = keras.Model(i, layers.Dense(10)(layers.GlobalAveragePooling2D()(c3(h))))
    _trained(model, 3, tmp_path / "first.keras")
    w, b = big.get_weights()
    big.set_weights([w * 8, b * 8])  # pre-activations to about +-50, as an unnormalised layer gives
    w3, b3 = c3.get_weights()
    c3.set_weights([w3 / 8, b3])
    model.save(tmp_path / "selu.keras")
    out = tmp_path / "run"
    result = invoke("convert", tmp_path / "selu.keras", "--int8", "--calib", TRAIN, "--data", CALIBRATION /
                    "digits-test.npz", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "layer selu is broken in int8" in result.stderr
    arts = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    t = arts["tflite_int8"]
    ad = t["details"]["adaptive"]
    assert ad["broken_layers"] == ["selu"] and ad["chosen"].endswith("selu in float")
    assert t["details"]["float_layers"] == ["selu"] and not t["details"]["full_integer"]
    without = next(c for c in ad["candidates"] if c["name"] == ad["kept_float_of"])
    assert t["sqnr_db"] > without["sqnr_db"] + 10 and t["agreement"] >= without["agreement"]
    assert t["agreement"] >= 99.0 and t["sqnr_db"] > 35  # measured: 25.7 -> 43 dB on the held-out images
