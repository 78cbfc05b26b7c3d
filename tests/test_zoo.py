"""Tests for the edgeres model zoo (ResNet family, registry, weight copying)."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from edgeres.core.errors import ModelError, UsageError  # noqa: E402
from edgeres.zoo import (  # noqa: E402
    count_params,
    create_model,
    is_model_name,
    list_models,
    load_weights_from_keras_applications,
    model_entry,
)

# Trainable parameters of torchvision.models.resnet18/34.
TORCHVISION_TRAINABLE = {"resnet18": 11_689_512, "resnet34": 21_797_672}
# count_params() of keras.applications.X(weights=None), as in the Keras docs.
KERAS_TOTAL = {
    "resnet50": 25_636_712,
    "resnet101": 44_707_176,
    "resnet152": 60_419_944,
    "resnet50v2": 25_613_800,
    "resnet101v2": 44_675_560,
    "resnet152v2": 60_380_648,
}
# He et al. 2016, table 6 (0.27M / 0.85M / 1.7M) and the exact option-A counts.
CIFAR_PUBLISHED = {"resnet20": 270_000, "resnet56": 850_000, "resnet110": 1_700_000}
CIFAR_EXACT = {"resnet20": 269_722, "resnet56": 853_018, "resnet110": 1_727_962}


def _is_cifar(name):
    return bool(model_entry(name).shortcuts)


def _pixels(n, size, channels=3, seed=0):
    """Random uint8-like images (float32 0..255) with varied brightness."""
    rng = np.random.default_rng(seed)
    shape = (n, *((size, size) if isinstance(size, int) else size), channels)
    base = rng.uniform(0, 255, (n, 1, 1, channels))
    return np.clip(np.round(base + rng.normal(0, 60, shape)), 0, 255).astype("float32")


def _structure(model):
    """Named layers (minus input, preprocessing and keras' unnamed 1x1 pools)
    and the weight shapes of every weighted layer."""
    names, shapes = set(), {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name.startswith("preprocess_"):
            continue
        if isinstance(layer, keras.layers.MaxPooling2D) and layer.pool_size == (1, 1):
            continue  # ResNetV2 subsampling shortcut; auto-named in keras.applications
        names.add(layer.name)
        if layer.weights:
            shapes[layer.name] = [tuple(w.shape) for w in layer.weights]
    return names, shapes


def _keras_app(name, size=64, **kw):
    ctor = getattr(keras.applications, model_entry(name).keras_application)
    return ctor(weights=None, input_shape=(size, size, 3), classifier_activation=None, **kw)


# --------------------------------------------------------------------------
# Every model builds; reference architectures match exactly.


@pytest.mark.parametrize("name", list_models())
def test_builds_small_and_matches_reference(name):
    entry = model_entry(name)
    size = 32 if _is_cifar(name) else 64
    keras.utils.set_random_seed(0)
    model = create_model(name, input_size=size)
    assert model.name == name
    assert tuple(model.input.shape) == (None, size, size, 3)
    out = np.asarray(model(_pixels(2, size)))
    assert out.shape == (2, entry.default_num_classes)
    assert np.isfinite(out).all()

    total, trainable = count_params(model)
    if name in TORCHVISION_TRAINABLE:
        assert trainable == TORCHVISION_TRAINABLE[name]
    if entry.keras_application:
        ka = _keras_app(name, size)
        assert total == KERAS_TOTAL[name] == ka.count_params() == model.count_params()
        assert _structure(model) == _structure(ka)
    if name in CIFAR_EXACT:
        assert trainable == pytest.approx(CIFAR_PUBLISHED[name], rel=0.02)
        assert trainable == CIFAR_EXACT[name]


def test_registry_defaults():
    assert model_entry("resnet50").default_input_size == 224
    assert model_entry("resnet50").default_num_classes == 1000
    assert model_entry("resnet20").default_input_size == 32
    assert model_entry("resnet20").default_num_classes == 10
    assert is_model_name("resnet56") and not is_model_name("resnet7")
    assert {"resnet8", "resnet18", "resnet50v2", "resnet110"} <= set(list_models())
    model = create_model("resnet8")
    assert tuple(model.input.shape) == (None, 32, 32, 3)
    assert tuple(model.output.shape) == (None, 10)


@pytest.mark.parametrize("module", ["edgeres.zoo.registry", "edgeres.zoo.resnet", "edgeres.zoo"])
def test_builtin_models_registered_whichever_module_is_imported_first(module):
    """The package __init__ registers the built-in models, so a fresh interpreter
    that imports only ``edgeres.zoo.registry`` (or ``resnet``) still finds them."""
    code = (
        f"import {module}\n"
        "from edgeres.zoo.registry import list_models\n"
        "print(','.join(list_models()))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip().splitlines()[-1]
    assert out.split(",") == list_models()
    assert {"resnet8", "resnet18", "resnet50", "resnet152v2", "resnet110"} <= set(out.split(","))


def test_registry_does_not_import_architectures():
    """No import cycle: the registry is a plain table; resnet imports it, not the reverse."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("edgeres")
    assert graph.find_shortest_chain(importer="edgeres.zoo.registry", imported="edgeres.zoo.resnet") is None
    assert graph.find_shortest_chain(importer="edgeres.zoo.resnet", imported="edgeres.zoo.registry")


def test_preprocessing_is_excluded_from_counts():
    model = create_model("resnet8")
    pre = [layer.name for layer in model.layers if layer.name.startswith("preprocess_")]
    assert pre == ["preprocess_normalize"]
    assert count_params(model, exclude_preprocessing=False)[0] == model.count_params()


@pytest.mark.parametrize(
    "name,channels,expected",
    [
        ("resnet8", 3, lambda x: (x / 255 - [0.4914, 0.4822, 0.4465]) / [0.2470, 0.2435, 0.2616]),
        ("resnet8", 1, lambda x: (x / 255 - 0.5) / 0.25),
        ("resnet18", 3, lambda x: (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]),
        ("resnet50", 3, lambda x: x - [123.68, 116.779, 103.939]),
        ("resnet50v2", 3, lambda x: x / 127.5 - 1),
    ],
)
def test_preprocessing_values(name, channels, expected):
    model = create_model(name, input_size=32, channels=channels, width=0.125)
    x = _pixels(2, 8, channels=channels)
    got = np.asarray(model.get_layer("preprocess_normalize")(x))
    np.testing.assert_allclose(got, expected(x), rtol=1e-5, atol=1e-4)
    if name == "resnet50":  # keras 'caffe' is the same up to the RGB -> BGR flip
        from keras.applications import resnet

        np.testing.assert_allclose(got[..., ::-1], resnet.preprocess_input(x.copy()), atol=1e-4)


# --------------------------------------------------------------------------
# Weight copying from keras.applications (offline, random weights).


def _randomize(model, seed=0):
    """Give every bias / BN statistic a non-trivial value so the copy is tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for var, value in zip(layer.weights, layer.get_weights()):
            leaf = var.path.split("/")[-1]
            if leaf in ("gamma", "moving_variance"):
                value = rng.uniform(0.5, 1.5, value.shape)
            elif leaf in ("beta", "moving_mean", "bias"):
                value = rng.normal(0, 0.1, value.shape)
            values.append(value.astype("float32"))
        if values:
            layer.set_weights(values)


@pytest.fixture(scope="module")
def keras_resnet50():
    keras.utils.set_random_seed(1)
    ka = _keras_app("resnet50")
    _randomize(ka)
    return ka


@pytest.mark.parametrize("name", ["resnet50", "resnet50v2"])
def test_weights_copied_from_keras_applications_match(name, request):
    from keras.applications import resnet, resnet_v2

    if name == "resnet50":  # 'caffe': BGR, mean-subtracted
        ka, preprocess = request.getfixturevalue("keras_resnet50"), resnet.preprocess_input
    else:  # 'tf': x / 127.5 - 1
        keras.utils.set_random_seed(1)
        ka, preprocess = _keras_app(name), resnet_v2.preprocess_input
        _randomize(ka)
    model = create_model(name, input_size=64)
    flip = model_entry(name).flip_conv1_bgr
    assert flip == (name == "resnet50")
    copied = load_weights_from_keras_applications(model, ka, flip_conv1_bgr=flip)
    assert "conv1_conv" in copied and "predictions" in copied

    x = _pixels(4, 64, seed=3)  # RGB, 0..255
    ours = np.asarray(model(x))
    ref = np.asarray(ka(preprocess(x.copy())))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_weight_copy_rejects_mismatch(keras_resnet50):
    with pytest.raises(ModelError, match="predictions"):
        load_weights_from_keras_applications(
            create_model("resnet50", input_size=64, num_classes=10), keras_resnet50, True
        )
    with pytest.raises(ModelError, match="'conv1_conv'.* do not fit resnet18"):
        load_weights_from_keras_applications(
            create_model("resnet18", input_size=64), keras_resnet50, True
        )


def test_create_model_imagenet_path_offline(monkeypatch, keras_resnet50):
    """weights='imagenet' with the download replaced by the random twin."""
    calls = []

    def fake_resnet50(**kw):
        calls.append(kw)
        return keras_resnet50

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    model = create_model("resnet50", input_size=64, weights="imagenet")
    assert calls == [dict(weights="imagenet", include_top=True, classifier_activation=None)]
    src = keras_resnet50.get_layer("conv1_conv").get_weights()[0]
    dst = model.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(dst, src[:, :, ::-1, :])  # BGR -> RGB

    def failing(**kw):
        raise OSError("URL fetch failure on https://example.invalid\nmore detail")

    monkeypatch.setattr(keras.applications, "ResNet50", failing)
    message = r"could not load ImageNet weights for resnet50 .*: URL fetch failure"
    with pytest.raises(ModelError, match=message) as info:
        create_model("resnet50", weights="imagenet")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------
# CIFAR family and options.


def test_cifar_shortcut_b_and_width():
    _, a = count_params(create_model("resnet20", shortcut="A"))
    _, b = count_params(create_model("resnet20", shortcut="b"))
    assert b > a
    half = create_model("resnet20", width=0.5)
    assert half.get_layer("conv1_conv").kernel.shape[-1] == 8
    assert half.get_layer("conv4_block3_2_conv").kernel.shape[-1] == 32
    assert count_params(half)[1] < a / 3


def test_any_input_size_channels_and_classes():
    model = create_model("resnet8", input_size=(40, 24), channels=1, num_classes=3)
    assert np.asarray(model(_pixels(2, (40, 24), channels=1))).shape == (2, 3)
    model = create_model("resnet18", input_size=32, channels=4, num_classes=5, width=0.25)
    assert np.asarray(model(_pixels(1, 32, channels=4))).shape == (1, 5)


def test_random_init_is_deterministic():
    keras.utils.set_random_seed(7)
    a = create_model("resnet8").get_weights()
    keras.utils.set_random_seed(7)
    b = create_model("resnet8").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------
# Save / reload, user errors.


@pytest.mark.parametrize(
    "name,kw",
    [
        ("resnet8", dict(shortcut="A")),
        ("resnet8", dict(shortcut="B")),
        ("resnet50", dict(input_size=32, width=0.125)),
        ("resnet50v2", dict(input_size=32, width=0.125)),
    ],
)
def test_save_and_reload_safe_mode(tmp_path, name, kw):
    model = create_model(name, **kw)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    x = _pixels(2, kw.get("input_size", 32))
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(name="resnet7"), ModelError, r"unknown model 'resnet7'; known: resnet18, "),
        (dict(name="resnet8", num_classes=0), UsageError, "num_classes"),
        (dict(name="resnet50", shortcut="A"), UsageError, "shortcut"),
        (dict(name="resnet8", shortcut="C"), UsageError, "shortcut"),
        (dict(name="resnet50", input_size=16), UsageError, "too small"),
        (dict(name="resnet8", input_size=(32, 4)), UsageError, "too small"),
        (dict(name="resnet8", input_size="32"), UsageError, "input_size"),
        (dict(name="resnet8", width=0), UsageError, "width"),
        (dict(name="resnet8", channels=0), UsageError, "channels"),
        (dict(name="resnet8", weights="foo"), UsageError, "weights"),
        (dict(name="resnet8", weights="imagenet"), ModelError, "no ImageNet weights"),
        (dict(name="resnet50", weights="imagenet", width=0.5), UsageError, "width=1.0"),
    ],
)
def test_bad_options(kwargs, error, message):
    name = kwargs.pop("name")
    with pytest.raises(error, match=message) as info:
        create_model(name, **kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------
# Full-integer TFLite.


def test_resnet8_option_a_converts_to_full_int8():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    model = create_model("resnet8", shortcut="A")
    calibration = _pixels(8, 32, seed=1)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONCATENATION" in ops  # the option-A zero padding survived
    assert not ops & {"DEQUANTIZE", "QUANTIZE"}, ops  # no float islands

    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    x = _pixels(16, 32, seed=2)
    ref = np.asarray(model(x))
    got = []
    for image in x:
        q = np.clip(np.round(image / in_scale + in_zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        got.append((interpreter.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale)
    agree = (np.concatenate(got).argmax(1) == ref.argmax(1)).mean()
    assert agree >= 0.75, agree
