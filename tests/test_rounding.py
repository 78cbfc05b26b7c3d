"""GPTQ weight rounding (edgeres.quant.rounding): the solver on arrays, then both back ends on a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeres.quant import rounding
from tests.conftest import invoke


def _layer(seed: int, k: int = 144, o: int = 16, rows: int = 6000):
    """Correlated non-negative inputs (ReLU outputs are), weights on a per-row max-abs int8 grid."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) * 0.3 + np.eye(k)
    x = np.maximum(rng.normal(size=(rows, k)) @ mix + 0.3, 0)
    w = rng.normal(size=(o, k)) * rng.uniform(0.01, 0.2, size=(o, 1))
    scale = np.abs(w).max(1) / rounding.QMAX
    return x, w, scale


@pytest.mark.parametrize("seed", range(5))
def test_gptq_lowers_the_layer_output_error_and_stays_on_the_grid(seed: int):
    x, w, scale = _layer(seed)
    h = x.T @ x
    near = np.clip(np.round(w / scale[:, None]), -127, 127)
    q = rounding.gptq(w, scale, h)
    assert q.dtype == np.int8 and q.shape == w.shape and int(np.abs(q.astype(int)).max()) <= 127
    before = rounding.output_error(w, near * scale[:, None], h)
    after = rounding.output_error(w, q * scale[:, None], h)
    assert after < 0.8 * before, (before, after)
    # and on inputs it was not fitted to (the same distribution): the gain is not overfitted to the sample
    x2, _, _ = _layer(seed, rows=6000)
    x2 = x2[::-1] * np.random.default_rng(seed + 100).uniform(0.9, 1.1, size=(len(x2), 1))
    h2 = x2.T @ x2
    assert rounding.output_error(w, q * scale[:, None], h2) < rounding.output_error(w, near * scale[:, None], h2)


def test_columns_never_seen_nonzero_are_rounded_to_nearest():
    x, w, scale = _layer(7)
    x[:, :10] = 0.0  # dead inputs: nothing to fit them on
    q = rounding.gptq(w, scale, x.T @ x)
    assert np.array_equal(q[:, :10], np.clip(np.round(w[:, :10] / scale[:, None]), -127, 127))


def test_a_degenerate_statistic_falls_back_to_nearest_rounding():
    _, w, scale = _layer(3, k=8, o=4)
    h = np.full((8, 8), np.nan)
    assert np.array_equal(rounding.gptq(w, scale, h), np.clip(np.round(w / scale[:, None]), -127, 127))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("stride,dilation,pads", [((1, 1), (1, 1), (1, 1, 1, 1)), ((2, 2), (1, 1), (0, 0, 1, 1)),
                                                  ((1, 2), (2, 1), (2, 1, 2, 1))])
def test_patches_reproduce_a_direct_convolution(channels_last, stride, dilation, pads):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 9, 3))
    w = rng.normal(size=(4, 3, 3, 3))  # OHWI
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh = (xp.shape[1] - 2 * dilation[0] - 1) // stride[0] + 1
    ow = (xp.shape[2] - 2 * dilation[1] - 1) // stride[1] + 1
    ref = np.zeros((2, oh, ow, 4))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * stride[0]:i * stride[0] + 2 * dilation[0] + 1:dilation[0],
                     j * stride[1]:j * stride[1] + 2 * dilation[1] + 1:dilation[1]]
            ref[:, i, j] = np.einsum("nhwc,ohwc->no", win, w)
    if channels_last:
        rows = rounding.patches(x, kernel=(3, 3), strides=stride, dilations=dilation, pads=pads, channels_last=True)
        got = rows @ w.reshape(4, -1).T
    else:
        rows = rounding.patches(x.transpose(0, 3, 1, 2), kernel=(3, 3), strides=stride, dilations=dilation,
                                pads=pads, channels_last=False)
        got = rows @ w.transpose(0, 3, 1, 2).reshape(4, -1).T
    assert np.allclose(got.reshape(ref.shape), ref)


def test_sampled_patches_are_rows_of_the_full_matrix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 8, 4))
    geometry = {"kernel": (3, 3), "strides": (2, 2), "dilations": (1, 1), "pads": (1, 1, 0, 0), "channels_last": True}
    full = rounding.patches(x, **geometry)
    some = rounding.patches(x, 0.3, np.random.default_rng(5), **geometry)
    assert 0 < len(some) < len(full)
    assert all(np.any(np.all(full == row, axis=1)) for row in some)
    geometry["channels_last"] = False
    nchw = rounding.patches(x.transpose(0, 3, 1, 2), 0.3, np.random.default_rng(5), **geometry)
    assert np.array_equal(nchw.reshape(len(some), 4, 3, 3).transpose(0, 2, 3, 1).reshape(len(some), -1), some)


def test_same_pads_match_tensorflow():
    import tensorflow as tf

    for size, k, s, d in [(32, 3, 1, 1), (32, 3, 2, 1), (7, 3, 2, 1), (8, 1, 2, 1), (9, 5, 3, 2), (6, 4, 2, 1)]:
        top, bottom = rounding.same_pads(size, k, s, d)
        x = tf.random.normal((1, size, 1, 1))
        w = tf.random.normal((k, 1, 1, 1))
        same = tf.nn.conv2d(x, w, (s, 1), "SAME", dilations=(d, 1))
        valid = tf.nn.conv2d(tf.pad(x, [[0, 0], [top, bottom], [0, 0], [0, 0]]), w, (s, 1), "VALID",
                             dilations=(d, 1))
        assert same.shape == valid.shape and np.allclose(same, valid, atol=1e-5), (size, k, s, d)


def test_round_layers_keeps_nearest_where_gptq_is_not_closer():
    x, w, scale = _layer(1, k=16, o=4)
    written = {}
    def rows(xb, keep, rng):
        return xb

    exact = rounding.Layer("exact", "a", np.round(w / scale[:, None]) * scale[:, None], scale, rows, 1,
                           lambda q: written.setdefault("exact", q))  # already on the grid
    real = rounding.Layer("real", "a", w, scale, rows, 1, lambda q: written.setdefault("real", q))
    passes = []

    def inputs(source):
        passes.append(source)
        yield from (x[i:i + 1000] for i in range(0, len(x), 1000))

    record = rounding.round_layers([exact, real], inputs, len(x))
    assert record["layers"] == ["real"] and list(written) == ["real"] and record["output_error_db"] > 0
    assert passes == ["a"]  # two layers on one input: one pass


@pytest.fixture(scope="module")
def rounded_runs(tmp_path_factory) -> dict[str, dict]:
    """The embedded default built with one recipe, rounded to nearest and by GPTQ (both formats)."""
    reports = {}
    for how in ("nearest", "gptq"):
        root = tmp_path_factory.mktemp(how)
        recipe = root / "r.toml"
        recipe.write_text(f'calibration = "mse"\nbias_correction = true\nweight_rounding = "{how}"\n')
        out = root / "run"
        result = invoke("convert", "--int8", "--recipe", recipe, "-o", out)
        assert result.exit_code == 0, result.stderr
        reports[how] = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
        reports[how]["_dir"] = out
    return reports


@pytest.mark.parametrize("name", ["tflite_int8", "onnx_int8"])
def test_both_back_ends_round_by_gptq_and_stay_full_integer(rounded_runs, name: str):
    near, gptq = rounded_runs["nearest"][name], rounded_runs["gptq"][name]
    record = gptq["details"]["weight_rounding"]
    assert record["method"] == "gptq" and len(record["layers"]) >= 3 and record["output_error_db"] > 0, record
    assert "weight_rounding" not in near["details"]
    assert gptq["details"]["full_integer"] is True and "gptq rounding" in gptq["details"]["recipe_summary"]
    assert "empirical" in gptq["details"]["bias_correction"]  # bias correction still runs after the rounding
    # the integers really differ, and the model is still a faithful int8 model of the same float32 one
    a = Path(rounded_runs["nearest"]["_dir"], near["path"]).read_bytes()
    b = Path(rounded_runs["gptq"]["_dir"], gptq["path"]).read_bytes()
    assert a != b
    assert gptq["agreement"] >= near["agreement"] - 2.0 and gptq["sqnr_db"] > 15


def test_an_unknown_rounding_is_one_line(tmp_path: Path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('weight_rounding = "adaround"\n')
    result = invoke("convert", "--int8", "--recipe", recipe, "-o", tmp_path / "run")
    assert result.exit_code == 2 and "weight_rounding" in result.stderr and "gptq" in result.stderr
    assert not (tmp_path / "run" / "report.json").exists()
