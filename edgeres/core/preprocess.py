"""Preprocessing: ``x = (pixels * scale - mean) / std``, every value checked.  LIGHT layer: numpy only."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeres.core.errors import DataError, ShapeError, UsageError

RESIZE_MODES = ("crop", "stretch")
FIELDS = ("scale", "mean", "std", "resize")
# Pixels are 0..255 and travel as float32 (at most 3.4e38): a smaller std or scale, or a larger parameter
# or transformed pixel, would vanish or overflow.
MIN_STD, MIN_SCALE, MAX_VALUE = 1e-6, 1e-30, 1e30

_REAL = (int, float, np.integer, np.floating)


class _BadPreprocess(UsageError):
    """A bad preprocessing value: ``key`` as in report.json, ``detail`` the reason."""
    def __init__(self, key: str, detail: str, option: str | None = None):
        super().__init__(f"{option or '--' + key} {detail}")
        self.key, self.detail = key, detail


def _values(v, key: str) -> tuple[float, ...]:
    """``v`` (a number, or 1 or 3 of them) as finite floats of magnitude at most MAX_VALUE."""
    items = [v] if isinstance(v, _REAL) and not isinstance(v, bool) else v
    if (isinstance(items, (str, bytes, dict)) or not isinstance(items, (Sequence, np.ndarray))
            or (isinstance(items, np.ndarray) and items.ndim != 1) or len(items) not in (1, 3)
            or not all(isinstance(x, _REAL) and not isinstance(x, (bool, np.bool_)) for x in items)):
        raise _BadPreprocess(key, f"takes 1 or 3 numbers, got {v!r}")
    try:
        out = tuple(float(x) for x in items)
    except OverflowError:  # json.loads reads 1e400 written out in digits as a Python int
        out = (math.inf,)
    if not all(abs(x) <= MAX_VALUE for x in out):  # NaN fails too
        raise _BadPreprocess(key, f"must be finite, at most {MAX_VALUE:g} in magnitude, got "
                                  f"{','.join(f'{x:g}' for x in out)}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """``x = (pixels * scale - mean) / std`` per channel, after resizing.

    The default (scale 1, mean 0, std 1) feeds raw 0..255 pixels, for models that normalise inside,
    like the edgeres zoo's.  Values are checked (finite, 0..255 stays finite in float32) and made floats.
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "crop"

    def __post_init__(self) -> None:
        if not isinstance(self.resize, str) or self.resize not in RESIZE_MODES:
            raise _BadPreprocess("resize", f"must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, _REAL):
            raise _BadPreprocess("scale", f"takes a number, got {self.scale!r}")
        (scale,), mean, std = _values(self.scale, "scale"), _values(self.mean, "mean"), _values(self.std, "std")
        if abs(scale) < MIN_SCALE:
            raise _BadPreprocess("scale", f"must be non-zero, at least {MIN_SCALE:g} in magnitude, got {scale:g}")
        if not all(abs(s) >= MIN_STD for s in std):
            raise _BadPreprocess("std", f"values must be non-zero, at least {MIN_STD:g} in magnitude (a smaller "
                                        f"std overflows float32 pixels), got {list(std)}")
        m, sd = np.resize(np.asarray(mean), 3), np.abs(np.resize(np.asarray(std), 3))  # 1 value broadcast to 3
        peak = float(np.max(np.maximum(np.abs(m), np.abs(255.0 * scale - m)) / sd))  # at pixels 0 and 255
        if not peak < MAX_VALUE:
            raise _BadPreprocess("scale/mean/std", f"turn 0..255 pixels into values up to {peak:.3g}, beyond "
                                 f"float32's safe range ({MAX_VALUE:g})", option="--scale/--mean/--std")
        for name, value in (("scale", scale), ("mean", mean), ("std", std)):
            object.__setattr__(self, name, value)

    @classmethod
    def parse(cls, scale: float = 1.0, mean: str | None = None, std: str | None = None,
              resize: str = "crop") -> Preprocess:
        try:
            scale = float(scale)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"--scale takes a number, got {scale!r}") from None
        return cls(scale=scale, mean=_floats(mean, "--mean", (0.0,)),
                   std=_floats(std, "--std", (1.0,)), resize=resize)

    @staticmethod
    def given(scale: float | None = None, mean: str | None = None, std: str | None = None,
              resize: str | None = None) -> dict:
        """The preprocessing options the user gave (None: not given), parsed: ``{field: value}`` for
        :meth:`merged`, so one option changes one field and the others keep their recorded values."""
        out: dict = {}
        if scale is not None:
            out["scale"] = Preprocess.parse(scale).scale
        if mean is not None:
            out["mean"] = _floats(mean, "--mean", (0.0,))
        if std is not None:
            out["std"] = _floats(std, "--std", (1.0,))
        if resize is not None:
            out["resize"] = resize
        return out

    def merged(self, fields: dict) -> Preprocess:
        """This preprocessing with ``fields`` (from :meth:`given`) replacing its own; the result is checked
        as a whole (a given --std may not fit a recorded --scale)."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise UsageError(f"unknown preprocessing field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **fields)

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> Preprocess:
        """The inverse of :meth:`to_dict` (missing keys: defaults).  Given ``source``, where ``d`` was read
        (e.g. ``"report.json in RUN"``), a bad value is a DataError naming it and the key, not an option."""
        try:
            if not isinstance(d, dict):
                raise _BadPreprocess("", f"must be a JSON object, got {type(d).__name__}", "preprocess")
            return cls(scale=d.get("scale", 1.0), mean=d.get("mean", (0.0,)), std=d.get("std", (1.0,)),
                       resize=d.get("resize", "crop"))
        except _BadPreprocess as exc:
            if source is None:
                raise
            raise DataError(f"{source}: preprocess{'.' * bool(exc.key)}{exc.key} {exc.detail}") from None

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and set(self.mean) == {0.0} and set(self.std) == {1.0}

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        if self.is_identity:
            return x
        channels = x.shape[-1]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise ShapeError(f"--mean/--std have {max(mean.size, std.size)} values but the model "
                             f"input has {channels} channels")
        return (x * np.float32(self.scale) - mean) / std

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "formula": "x = (pixels * scale - mean) / std"}


def _floats(text: str | None, option: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None or str(text).strip() == "":
        return default
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, got {text!r}") from None
