"""The measured roofline: a generated one-convolution model, run by the real runtime, and its cache."""

from __future__ import annotations

import json

import pytest

from edgeres.core.runtime import open_runner
from edgeres.measure import roofline


@pytest.mark.parametrize("precision, dtype", [("int8", "int8"), ("float32", "float32")])
def test_the_ceiling_model_is_one_fully_delegated_convolution(tmp_path, precision, dtype):
    path = tmp_path / "c.tflite"
    path.write_bytes(roofline.conv_model(precision=precision))
    r = open_runner(path, threads=1)
    assert r.macs() == roofline.CEILING_MACS == 28 * 28 * 256 * 9 * 256
    assert r.op_counts() == {"CONV_2D": 1, "DELEGATE": 1}
    cov = r.delegate_coverage()
    assert cov["ops_delegated"] == cov["ops_total"] == 1  # XNNPACK runs it, as it runs the models measured
    assert r.input_dtype.name == dtype and r.compute_precision() == precision


def test_the_ceiling_is_measured_once_and_cached_per_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(roofline, "CACHE", tmp_path / "roofline.json")
    first = roofline.measured_ceiling(1, runs=5)
    assert not first["cached"] and first["gmacs"] > 1 and first["p50_ms"] > 0
    again = roofline.measured_ceiling(1, runs=5)
    assert again["cached"] and again["gmacs"] == first["gmacs"]
    other = roofline.measured_ceiling(1, precision="float32", runs=5)
    assert not other["cached"]
    assert len(json.loads((tmp_path / "roofline.json").read_text())) == 2
    # int8 kernels must beat float ones on the same convolution, or the int8 path is not being used
    assert first["gmacs"] > other["gmacs"]
