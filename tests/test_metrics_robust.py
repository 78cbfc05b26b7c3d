"""Metrics and statistics on degenerate input: collapse against the reference, NaN outputs, a varying channel axis."""

from __future__ import annotations

import numpy as np

from edgeres.core.metrics import collapsed


def test_one_class_for_every_input_is_a_collapse_when_the_reference_tells_inputs_apart():
    ref = np.arange(200) % 10
    assert collapsed(np.zeros(200, int))
    assert collapsed(np.zeros(200, int), ref)
    assert not collapsed(ref, ref)


def test_a_reference_that_already_gives_one_class_is_not_broken_by_int8_doing_the_same():
    """A degenerate float model calls 96% of the images class 3; int8 calls 98% so, agreeing on 98%."""
    ref = np.full(200, 3)
    ref[:8] = np.arange(10, 18)  # 192 of 200 (96%) are class 3
    int8 = ref.copy()
    int8[4:8] = 3  # 196 of 200 (98%) are class 3; it agrees with the reference on 196, 4 of its 8 others
    assert collapsed(int8)  # on its own it looks collapsed
    assert not collapsed(int8, ref)
    other = np.full(200, 7)  # but one class the reference rarely gives is still a collapse
    assert collapsed(other, ref)
    assert collapsed(np.full(200, 3), ref)  # and so is losing every image the reference tells apart


def test_too_few_inputs_never_count():
    assert not collapsed(np.zeros(19, int), np.arange(19))


def test_nan_outputs_are_counted_and_never_a_zero_difference():
    from edgeres.core.metrics import Tally

    ref = np.eye(4, dtype=np.float32)
    out = ref.copy()
    out[1, 2] = np.nan
    t = Tally()
    t.update(out, y=np.arange(4), ref=ref)
    r = t.result()
    assert r["nonfinite_outputs"] == 1
    assert r["max_abs_diff"] == float("inf")
    clean = Tally()
    clean.update(ref, ref=ref)
    assert "nonfinite_outputs" not in clean.result() and clean.result()["max_abs_diff"] == 0.0


def test_per_channel_statistics_of_a_tensor_whose_channel_axis_is_the_batch_are_dropped_not_a_crash():
    """ONNX's channel axis is 1; after one of tf2onnx's transposes a tensor can hold the batch there, whose
    size changes with the last, shorter batch (ConvNeXt: 'operands could not be broadcast (32,) (12,)')."""
    from edgeres.quant.stats import ActivationStats

    stats = ActivationStats(channel_axis=1)
    rng = np.random.default_rng(0)
    for n in (32, 32, 12):
        stats.observe("t", rng.normal(size=(4, n)).astype(np.float32))
    stats.observe("conv", rng.normal(size=(7, 8, 2, 2)).astype(np.float32))
    stats.observe("conv", rng.normal(size=(3, 8, 2, 2)).astype(np.float32))
    t, conv = stats.tensors["t"], stats.tensors["conv"]
    assert t.ch_varies and t.ch_lo is None and t.count == 4 * 76
    assert not conv.ch_varies and conv.ch_lo.shape == (8,)
    assert stats.channel_mean("t", 12) is None
