"""Recipes (strict TOML), range selection, failure causes and layer names: pure Python + numpy, no converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeres.core.errors import UsageError
from edgeres.core.layers import resolve_layer
from edgeres.quant.diagnosis import HEADER, find_causes, table_rows
from edgeres.quant.recipes import (
    ACTIVATIONS,
    CALIBRATION,
    IO_DTYPES,
    OUTPUTS,
    WEIGHTS,
    BackendOverride,
    list_recipes,
    match_layers,
    recipes_dir,
    resolve_recipe,
)
from edgeres.quant.stats import BINS, ActivationStats, choose_range

BUNDLED = sorted(p.stem for p in recipes_dir().glob("*.toml"))


def write_recipe(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line_usage_error(path: Path, *needles: str) -> str:
    """Load `path` as a recipe; it must fail with a one-line UsageError naming the file and every needle."""
    with pytest.raises(UsageError) as info:
        resolve_recipe(str(path))
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------------- recipes


def test_every_bundled_recipe_loads_with_valid_fields():
    recipes = list_recipes()
    assert [r.name for r in recipes] == BUNDLED
    assert {"default", "stock", "percentile", "entropy", "per-tensor", "int16x8"} <= set(BUNDLED)
    for r in recipes:
        assert r.description.strip(), r.name
        assert "\n" not in r.description, r.name
        assert Path(r.path) == recipes_dir() / f"{r.name}.toml"
        assert r.weights in WEIGHTS and r.activations in ACTIVATIONS and r.calibration in CALIBRATION
        assert r.output in OUTPUTS and r.io_dtype in IO_DTYPES
        assert 50.0 < r.percentile <= 100.0
        for backend in ("tflite", "onnx"):
            b = r.for_backend(backend)
            assert b.calibration in CALIBRATION
            assert b.tflite == BackendOverride() and b.onnx == BackendOverride()
        assert r.summary()


def test_bundled_recipes_say_what_they_are():
    by_name = {r.name: r for r in list_recipes()}
    assert by_name["stock"].calibration == "minmax" and by_name["stock"].output == "calibrated"
    assert by_name["entropy"].calibration == "entropy"
    assert by_name["per-tensor"].weights == "per-tensor"
    assert by_name["int16x8"].activations == "int16"
    assert not by_name["int16x8"].full_integer
    assert by_name["default"].full_integer


def test_resolve_default_by_name_none_and_path():
    by_name = resolve_recipe("default")
    assert by_name.name == "default"
    assert by_name.calibration == "mse" and by_name.bias_correction is True and by_name.output == "float"
    assert resolve_recipe(None) == by_name
    by_path = resolve_recipe(str(recipes_dir() / "default.toml"))
    assert by_path == by_name


def test_default_for_backend_applies_its_tflite_table():
    default = resolve_recipe("default")
    assert default.tflite.calibration == "percentile"
    tfl = default.for_backend("tflite")
    assert tfl.calibration == "percentile"
    assert tfl.percentile == pytest.approx(99.999)
    assert tfl.bias_correction is True and tfl.output == "float" and tfl.weights == "per-channel"
    assert tfl.tflite == BackendOverride() and tfl.onnx == BackendOverride()
    onnx = default.for_backend("onnx")
    assert onnx.calibration == "mse"
    assert onnx.bias_correction is True
    # the original is frozen and untouched
    assert default.calibration == "mse" and default.tflite.calibration == "percentile"


def test_recipe_file_by_path_with_backend_tables(tmp_path):
    path = write_recipe(tmp_path, """
description = "mine"
calibration = "minmax"
bias_correction = true
percentile = 99
keep_float = ["layer1.*", "dense"]

[onnx]
calibration = "percentile"
percentile = 99.9
bias_correction = "false"
""")
    r = resolve_recipe(str(path))
    assert r.name == "mine" and r.path == str(path)
    assert r.percentile == 99.0 and isinstance(r.percentile, float)
    assert r.keep_float == ("layer1.*", "dense")
    assert not r.full_integer
    onnx = r.for_backend("onnx")
    assert (onnx.calibration, onnx.percentile, onnx.bias_correction) == ("percentile", 99.9, False)
    tfl = r.for_backend("tflite")
    assert (tfl.calibration, tfl.percentile, tfl.bias_correction) == ("minmax", 99.0, True)


def test_explicit_name_in_file_wins_over_stem(tmp_path):
    path = write_recipe(tmp_path, 'name = "fancy"\n', "file.toml")
    assert resolve_recipe(str(path)).name == "fancy"


@pytest.mark.parametrize("text, needles", [
    ('calibraton = "mse"\n', ["calibraton"]),
    ('bias_correction = "yes"\n', ["bias_correction", "bool", "yes"]),
    ('calibration = "magic"\n', ["calibration", "magic", "mse"]),
    ("percentile = 120\n", ["percentile", "120"]),
    ("percentile = 0\n", ["percentile"]),
    ("calib_size = -1\n", ["calib_size", "-1"]),
    ("calib_size = 1.5\n", ["calib_size", "int"]),
    ('keep_float = "layer1"\n', ["keep_float"]),
    ('output = "logits"\n', ["output", "logits"]),
    ("tflite = 3\n", ["tflite", "table"]),
    ('[tflite]\ncalibraton = "mse"\n', ["tflite", "calibraton"]),
    ('[onnx]\ncalibration = "magic"\n', ["onnx.calibration", "magic"]),
    ("[tflite]\npercentile = 30\n", ["tflite.percentile", "30"]),
    ('[onnx]\nbias_correction = "maybe"\n', ["onnx.bias_correction", "maybe"]),
    ('description = "x"\npath = "/elsewhere"\n', ["path"]),
    ('calibration = "mse\n', []),  # not TOML at all
])
def test_bad_recipe_file_is_one_line_error_naming_file_and_key(tmp_path, text, needles):
    path = write_recipe(tmp_path, text)
    one_line_usage_error(path, *needles)


def test_backend_table_percentile_zero_means_not_set(tmp_path):
    path = write_recipe(tmp_path, 'calibration = "percentile"\npercentile = 99.9\n[tflite]\npercentile = 0\n')
    assert resolve_recipe(str(path)).for_backend("tflite").percentile == 99.9


def test_unknown_recipe_name_lists_known_names():
    with pytest.raises(UsageError) as info:
        resolve_recipe("no-such-recipe")
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert "no-such-recipe" in msg
    for name in BUNDLED:
        assert name in msg


def test_missing_recipe_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(UsageError, match="does not exist"):
        resolve_recipe(str(missing))


LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "add", "dense"]


def test_match_layers_in_order_without_duplicates():
    assert match_layers(["layer1.0.*", "*.conv1"], LAYERS) == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert match_layers(("dense",), LAYERS) == ["dense"]
    assert match_layers(["*", "conv1"], LAYERS) == LAYERS
    assert match_layers(["layer1.?.conv2"], LAYERS) == ["layer1.0.conv2", "layer1.1.conv2"]
    assert match_layers([], LAYERS) == []
    assert match_layers(["DENSE", "dense"], ["DENSE", "dense"]) == ["DENSE", "dense"]  # case-sensitive


def test_match_layers_pattern_matching_nothing_is_an_error():
    with pytest.raises(UsageError) as info:
        match_layers(["layer1.*", "layer9.*"], LAYERS, source="recipe mine.toml")
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert "'layer9.*'" in msg and "recipe mine.toml" in msg
    assert "layer1.*" not in msg.replace("layer1.0", "").replace("layer1.1", "")
    with pytest.raises(UsageError, match="Dense"):
        match_layers(["Dense"], LAYERS)


# ---------------------------------------------------------------- range selection


def hist_of(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(x.min()), float(x.max())
    return np.histogram(x, BINS, (lo, hi))[0].astype(np.float64), lo, hi


def mass_inside(x: np.ndarray, a: float, b: float) -> float:
    return float(((x >= a) & (x <= b)).mean())


@pytest.fixture(scope="module")
def gauss_with_outliers() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=1_000_000)
    x[[10, 20_000, 500_000]] = [1000.0, -800.0, 900.0]
    return x


def test_minmax_is_full_range_and_contains_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000)
    h, lo, hi = hist_of(x)
    assert choose_range(h, lo, hi, "minmax") == (lo, hi)
    assert choose_range(None, lo, hi, "mse") == (lo, hi)  # no histogram: min/max
    pos = rng.uniform(3.0, 5.0, size=1000)
    h, lo, hi = hist_of(pos)
    assert choose_range(h, lo, hi, "minmax") == (0.0, hi)
    neg = -pos
    h, lo, hi = hist_of(neg)
    assert choose_range(h, lo, hi, "minmax") == (lo, 0.0)
    assert choose_range(np.zeros(BINS), -1.0, 2.0, "percentile") == (-1.0, 2.0)  # empty histogram
    with pytest.raises(ValueError, match="magic"):
        choose_range(*hist_of(x), "magic")


def test_percentile_and_mse_ignore_a_few_huge_outliers(gauss_with_outliers):
    x = gauss_with_outliers
    h, lo, hi = hist_of(x)
    full = hi - lo
    assert (lo, hi) == (-800.0, 1000.0)
    a, b = choose_range(h, lo, hi, "percentile", 99.99)
    assert a < 0 < b
    assert b - a < 0.02 * full
    assert mass_inside(x, a, b) >= 0.9997
    assert 3.0 < -a < 5.0 and 3.0 < b < 5.0  # about the 0.01% tails of N(0, 1), up to one bin
    a, b = choose_range(h, lo, hi, "mse")
    assert lo <= a < 0 < b <= hi
    assert b - a < 0.5 * full
    assert mass_inside(x, a, b) >= 0.99999
    assert a / lo == pytest.approx(b / hi)  # both ends scaled together


def test_entropy_range_is_inside_the_observed_range(gauss_with_outliers):
    rng = np.random.default_rng(2)
    for x in (gauss_with_outliers, rng.normal(size=200_000), np.append(rng.normal(size=200_000), 30.0)):
        h, lo, hi = hist_of(x)
        a, b = choose_range(h, lo, hi, "entropy")
        assert lo <= a <= 0.0 <= b <= hi
        assert b > 0 and a < 0
    # on a clean Gaussian it clips the sparse tails, keeping nearly all the mass
    x = rng.normal(size=200_000)
    h, lo, hi = hist_of(x)
    a, b = choose_range(h, lo, hi, "entropy")
    assert b - a < hi - lo
    assert mass_inside(x, a, b) > 0.99


def test_entropy_clips_a_single_far_outlier():
    x = np.random.default_rng(0).normal(size=200_000)
    x[0] = 100.0
    h, lo, hi = hist_of(x)
    a, b = choose_range(h, lo, hi, "entropy")
    assert b < 50.0, (a, b)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_relu_like_distribution_keeps_lower_end_at_zero(method):
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=200_000), 0.0)
    x[:3] = [50.0, 60.0, 80.0]
    h, lo, hi = hist_of(x)
    assert lo == 0.0
    a, b = choose_range(h, lo, hi, method, 99.99)
    assert a == 0.0
    assert 0.0 < b <= hi
    assert mass_inside(x, a, b) > 0.99
    if method in ("percentile", "mse"):
        assert b < 0.9 * hi


def batches_nhwc(seed: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    shift = np.array([0.0, 1.0, -3.0, 10.0], np.float32)
    return [(rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * scale + shift) for _ in range(n)]


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_activation_stats_two_passes_match_numpy(channel_axis):
    batches = batches_nhwc(4)
    if channel_axis == 1:
        batches = [b.transpose(0, 3, 1, 2).copy() for b in batches]
    stats = ActivationStats(channel_axis=channel_axis)
    for b in batches:
        stats.observe("t", b)
        stats.observe("ints", b.astype(np.int32))  # not float: ignored
        stats.observe("empty", np.zeros((0, 4), np.float32))  # empty: ignored
    assert set(stats.tensors) == {"t"}
    stats.start_histograms()
    for b in batches:
        stats.observe("t", b)
    allx = np.concatenate(batches).astype(np.float64)
    s = stats.tensors["t"]
    other = tuple(i for i in range(4) if i != channel_axis % 4)
    assert s.lo == allx.min() and s.hi == allx.max()
    assert s.count == allx.size
    assert s.mean == pytest.approx(allx.mean(), rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(allx.std(), rel=1e-6)
    np.testing.assert_array_equal(s.ch_lo, allx.min(axis=other))
    np.testing.assert_array_equal(s.ch_hi, allx.max(axis=other))
    np.testing.assert_allclose(s.ch_sum, allx.sum(axis=other), rtol=1e-9, atol=1e-9)
    assert s.ch_count == allx.size // 4
    assert s.hist.shape == (BINS,)
    assert s.hist.sum() == allx.size
    np.testing.assert_array_equal(s.hist, np.histogram(allx.astype(np.float32), BINS, (s.lo, s.hi))[0])
    assert stats.range("t", "minmax") == (s.lo, s.hi)
    a, b = stats.range("t", "percentile", 99.0)
    assert s.lo <= a < 0 < b <= s.hi


def test_activation_stats_counts_zeros_and_rank1_has_no_channels():
    stats = ActivationStats()
    stats.observe("v", np.array([0.0, 0.0, 1.0, -2.0], np.float32))
    s = stats.tensors["v"]
    assert s.zeros == 2 and s.count == 4 and s.ch_lo is None and s.ch_sum is None
    assert ActivationStats().tensors == {}


def test_strictly_positive_tensor_percentile_covers_its_values():
    rng = np.random.default_rng(0)
    x = np.append(rng.uniform(10.0, 11.0, size=4095), 100.0).astype(np.float32).reshape(16, 16, 16)
    stats = ActivationStats()
    stats.observe("t", x)
    stats.start_histograms()
    stats.observe("t", x)
    a, b = stats.range("t", "percentile", 99.9)
    assert a == 0.0
    assert b >= 10.0, (a, b)  # got (0.0, 1.12): every value clipped


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_a_tensor_too_narrow_for_the_histogram_bins_gets_its_min_and_max(method):
    """An untrained EfficientNetB0 has a tensor whose values differ only in the last float32 bits: numpy
    cannot split that range into 2,048 bins and raised "Too many bins for data range" (the whole conversion
    failed).  Such a tensor now gets its observed range."""
    x = np.full((4, 8, 8, 3), 1.0, np.float32)
    x[0, 0, 0, 0] = np.nextafter(np.float32(1.0), np.float32(2.0))
    wide = np.linspace(-1.0, 2.0, 96, dtype=np.float32).reshape(2, 4, 4, 3)
    stats = ActivationStats()
    for second in (False, True):
        if second:
            stats.start_histograms()
        stats.observe("narrow", x)
        stats.observe("wide", wide)
    assert stats.tensors["narrow"].hist is None and stats.tensors["wide"].hist.sum() == wide.size
    assert stats.range("narrow", method) == (0.0, float(x.max()))


# ---------------------------------------------------------------- failure causes


def gauss(rng, shape=(8, 16, 16, 16)) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def synthetic(seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = gauss(rng)
    out[0, 0, 0, 0] = 1000.0
    dead = gauss(rng)
    dead[..., ::2] = 0.25  # half the channels constant
    return {"t_outliers": out, "t_dead": dead, "t_shift": gauss(rng) + shift, "t_clean": gauss(rng),
            "t_unmapped": out.copy()}


def collect(arrays: dict[str, np.ndarray], histograms: bool = True) -> ActivationStats:
    stats = ActivationStats(channel_axis=-1)
    for name, x in arrays.items():
        stats.observe(name, x)
    if histograms:
        stats.start_histograms()
        for name, x in arrays.items():
            stats.observe(name, x)
    return stats


LAYER_OF = {"t_outliers": "layer1.0.conv1", "t_dead": "layer1.0.conv2", "t_shift": "layer2.0.conv1",
            "t_clean": "dense", "t_missing": "layer3.0.conv1"}


def kinds_by_layer(causes: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in causes:
        out.setdefault(c["layer"], set()).add(c["kind"])
    return out


def test_find_causes_names_each_failure_and_nothing_else():
    calib = collect(synthetic(0))
    val = collect(synthetic(1, shift=5.0), histograms=False)
    causes = find_causes(calib, val, LAYER_OF)
    assert kinds_by_layer(causes) == {
        "layer1.0.conv1": {"outliers"},
        "layer1.0.conv2": {"dead_channels"},
        "layer2.0.conv1": {"calibration_coverage"},
    }
    by_kind = {c["kind"]: c for c in causes}
    assert by_kind["outliers"]["tensor"] == "t_outliers"
    assert "1e+03" in by_kind["outliers"]["detail"]
    assert by_kind["dead_channels"]["tensor"] == "t_dead"
    assert "8 of 16 channels" in by_kind["dead_channels"]["detail"]
    assert by_kind["calibration_coverage"]["tensor"] == "t_shift"
    for c in causes:
        assert set(c) == {"kind", "layer", "tensor", "detail"}
        assert "\n" not in c["detail"]


def test_find_causes_clean_tensor_has_no_cause():
    calib = collect({"x": gauss(np.random.default_rng(5))})
    val = collect({"x": gauss(np.random.default_rng(6))}, histograms=False)
    assert find_causes(calib, val, {"x": "conv1"}) == []
    assert find_causes(calib, val, {}) == []


def test_find_causes_outliers_need_the_histogram_pass():
    arrays = synthetic(0)
    val = collect(synthetic(1), histograms=False)
    without = find_causes(collect(arrays, histograms=False), val, {"t_outliers": "conv"})
    assert "outliers" not in {c["kind"] for c in without}
    with_hist = find_causes(collect(arrays), val, {"t_outliers": "conv"})
    assert [c["kind"] for c in with_hist] == ["outliers"]


def test_find_causes_one_line_per_kind_and_layer():
    arrays = synthetic(0)
    calib = collect(arrays)
    val = collect(synthetic(1), histograms=False)
    causes = find_causes(calib, val, {"t_outliers": "conv", "t_unmapped": "conv"})
    assert [(c["kind"], c["layer"], c["tensor"]) for c in causes] == [("outliers", "conv", "t_outliers")]


def test_find_causes_shrunken_validation_spread_is_coverage():
    rng = np.random.default_rng(7)
    calib = collect({"x": gauss(rng)})
    val = collect({"x": 0.1 * gauss(rng)}, histograms=False)
    assert [c["kind"] for c in find_causes(calib, val, {"x": "conv1"})] == ["calibration_coverage"]
    # no validation stats for the tensor: only calibration-side causes are possible
    assert find_causes(calib, ActivationStats(), {"x": "conv1"}) == []


def test_table_rows_formats_each_layer():
    diagnosis = {"layers": [
        {"layer": "layer1.0.conv1", "ops": ["CONV_2D", "CONV_2D", "RELU"], "sqnr_db": 31.27, "rmse_rel": 0.012345,
         "only_quantized_loss": -1.5, "only_float_gain": 2.0, "only_float_sqnr_gain": 0.456,
         "causes": ["outliers", "dead_channels"]},
        {"layer": "dense", "ops": ["FULLY_CONNECTED"], "sqnr_db": None, "rmse_rel": None,
         "only_quantized_loss": None, "only_float_gain": None, "causes": []},
    ]}
    rows = table_rows(diagnosis)
    assert rows == [
        ("layer1.0.conv1", "CONV_2D+RELU", "31.3", "0.0123", "-1.50", "+2.00", "+0.46", "outliers, dead_channels"),
        ("dense", "FULLY_CONNECTED", "-", "-", "-", "-", "-", "-"),
    ]
    assert all(len(r) == len(HEADER) for r in rows)
    assert table_rows({"layers": []}) == []


# ---------------------------------------------------------------- layer names

RESNET_TYPES = {
    "conv1": "Conv2D", "bn1": "BatchNormalization", "relu": "ReLU",
    "layer1.0.conv1": "Conv2D", "layer1.0.bn1": "BatchNormalization", "layer1.0.relu1": "ReLU",
    "layer1.0.conv2": "Conv2D", "layer1.0.bn2": "BatchNormalization", "layer1.0.add": "Add",
    "layer1.0.relu2": "ReLU", "avgpool": "GlobalAveragePooling2D", "dense": "Dense",
}


@pytest.mark.parametrize("names, expected", [
    (["model_1/layer1.0.relu1_1/Relu;model_1/layer1.0.bn1_1/batchnorm/add_1;model_1/layer1.0.conv1_1/convolution"],
     "layer1.0.conv1"),
    (["model_1/layer1.0.relu2_1/Relu;model_1/layer1.0.add_1/add"], "layer1.0.add"),
    (["model_1/layer1.0.add_1/add;model_1/layer1.0.relu2_1/Relu"], "layer1.0.add"),
    (["resnet20_1/layer1.0.conv1_1/convolution/merged_input:0"], "layer1.0.conv1"),
    (["model_1/layer1.0.relu1_1/Relu", "model_1/layer1.0.conv1_1/BiasAdd:0"], "layer1.0.conv1"),
    (["model_1/avgpool_1/Mean;model_1/layer1.0.relu2_1/Relu"], "avgpool"),
    (["model_1/dense_1/MatMul;model_1/dense_1/BiasAdd"], "dense"),
    (["model_1/bn1_1/batchnorm/mul_1;model_1/relu_1/Relu"], "bn1"),
    (["model_1/layer9.0.conv1_1/convolution"], None),
    (["serving_default_input:0"], None),
    ([], None),
])
def test_resolve_layer(names, expected):
    assert resolve_layer(names, RESNET_TYPES) == expected


def test_resolve_layer_prefers_weighted_then_merge_layers():
    types = {"a": "ReLU", "b": "Add", "c": "DepthwiseConv2D"}
    assert resolve_layer(["m/a/x;m/b/y;m/c/z"], types) == "c"
    assert resolve_layer(["m/a/x;m/b/y"], types) == "b"
    assert resolve_layer(["m/a_3/x"], types) == "a"
    assert resolve_layer(["m/a/x"], {}) is None


def test_a_recipe_file_named_like_a_bundled_recipe_is_refused(tmp_path):
    """A file calling itself 'stock' (by name = or by its file name) was reported as the bundled stock recipe."""
    from edgeres.core.errors import UsageError

    for name, text in (("mine.toml", 'name = "stock"\ncalibration = "entropy"\n'),
                       ("stock.toml", 'calibration = "entropy"\n')):
        (tmp_path / name).write_text(text)
        with pytest.raises(UsageError, match="like the bundled recipe"):
            resolve_recipe(str(tmp_path / name))
    (tmp_path / "ok.toml").write_text('name = "entropy-mine"\ncalibration = "entropy"\n')
    assert resolve_recipe(str(tmp_path / "ok.toml")).name == "entropy-mine"
