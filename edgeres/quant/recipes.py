"""Quantization recipes: named, typed, data-only descriptions of an int8 conversion.

Foundation layer: standard library only.  A recipe is a TOML file (bundled
ones live in ``edgeres/_recipes``) that loads into a frozen :class:`Recipe`.
Each back end decodes it in exactly one place: ``edgeres.backends.tflite.
quantize`` and ``edgeres.backends.onnx.quantize``.  Unknown fields, wrong
types and unknown values are one-line errors naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from edgeres.core.errors import UsageError
from edgeres.core.typed_toml import load_typed, resolve_toml

WEIGHTS = ("per-channel", "per-tensor")
ACTIVATIONS = ("int8", "int16")
CALIBRATION = ("mse", "percentile", "entropy", "minmax")
ROUNDING = ("nearest", "gptq")
OUTPUTS = ("minmax", "calibrated", "float")
IO_DTYPES = ("", "int8", "uint8", "float32")


@dataclass(frozen=True)
class BackendOverride:
    """Per-back-end choices where the two runtimes measured differently (a [tflite] or [onnx] table)."""

    calibration: str = ""
    percentile: float = 0.0
    bias_correction: str = ""  # "", "true" or "false"


@dataclass(frozen=True)
class Recipe:
    """One int8 configuration.  Field docs are the recipe file format's reference."""

    name: str
    description: str = ""
    #: weight quantization, always symmetric int8: "per-channel" or "per-tensor"
    weights: str = "per-channel"
    #: activation precision: "int8", or "int16" (TFLite 16x8 mode; ONNX QDQ int16)
    activations: str = "int8"
    #: how activation ranges are chosen from the calibration histograms
    calibration: str = "mse"
    #: the percentile of |x| kept, for calibration = "percentile"
    percentile: float = 99.999
    #: calibration images; 0 means the command's --calib-size
    calib_size: int = 0
    #: model input/output dtype; "" means the target's
    io_dtype: str = ""
    #: shift biases to cancel the mean error quantization adds to each layer's output
    bias_correction: bool = False
    #: how weights are rounded to their int8 grid: "nearest", or "gptq" (each layer's output error on the
    #: calibration images, edgeres.quant.rounding)
    weight_rounding: str = "nearest"
    #: range of the model's output (logits): "minmax" never clips the top logit,
    #: "calibrated" uses the calibration method, "float" leaves the last layer's
    #: integer accumulator dequantized straight to float where the runtime has
    #: such a kernel (ONNX Runtime QGemm/QLinearConv); TFLite then uses "minmax"
    output: str = "minmax"
    #: layers (glob patterns on stable layer names) to keep in float
    keep_float: tuple[str, ...] = ()
    tflite: BackendOverride = field(default_factory=BackendOverride)
    onnx: BackendOverride = field(default_factory=BackendOverride)
    path: str = ""

    def for_backend(self, backend: str) -> Recipe:
        """This recipe with the [tflite] or [onnx] table applied."""
        o: BackendOverride = getattr(self, backend)
        changes: dict = {}
        if o.calibration:
            changes["calibration"] = o.calibration
        if o.percentile:
            changes["percentile"] = o.percentile
        if o.bias_correction:
            changes["bias_correction"] = o.bias_correction == "true"
        return dataclasses.replace(self, **changes, tflite=BackendOverride(), onnx=BackendOverride())

    def calib_images(self, requested: int) -> int:
        """Calibration images to use: the recipe's ``calib_size``, else the command's."""
        return self.calib_size or requested

    @property
    def full_integer(self) -> bool:
        return not self.keep_float and self.activations == "int8"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep_float"] = list(self.keep_float)
        return d

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        extra = [f"{b}: {getattr(self, b).calibration}" for b in ("tflite", "onnx") if getattr(self, b).calibration]
        parts = [self.calibration + (f" {self.percentile:g}" if self.calibration == "percentile" else ""),
                 self.weights, self.activations]
        if self.weight_rounding != "nearest":
            parts.append(f"{self.weight_rounding} rounding")
        if self.bias_correction:
            parts.append("bias correction")
        if self.output != "calibrated":
            parts.append(f"output {self.output}")
        if self.keep_float:
            parts.append("float: " + ", ".join(self.keep_float))
        return ", ".join(parts + extra)


_CHOICES = {
    ("", "weights"): WEIGHTS, ("", "activations"): ACTIVATIONS, ("", "calibration"): CALIBRATION,
    ("", "output"): OUTPUTS, ("", "weight_rounding"): ROUNDING, ("", "io_dtype"): IO_DTYPES,
    ("tflite", "calibration"): ("",) + CALIBRATION, ("onnx", "calibration"): ("",) + CALIBRATION,
    ("tflite", "bias_correction"): ("", "true", "false"), ("onnx", "bias_correction"): ("", "true", "false"),
}


def _check_percentile(value, key, path, kind) -> None:
    if key != "percentile" and value == 0.0:
        return  # a back-end table's "not set"
    if not 50.0 < value <= 100.0:
        raise UsageError(f"{kind} {path}: '{key}' must be in (50, 100], got {value:g}")


def _check_calib_size(value, key, path, kind) -> None:
    if value < 0:
        raise UsageError(f"{kind} {path}: '{key}' must be 0 or more, got {value}")


_CHECKS = {"percentile": _check_percentile, "tflite.percentile": _check_percentile,
           "onnx.percentile": _check_percentile, "calib_size": _check_calib_size}


def recipes_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "_recipes"


def list_recipes() -> list[Recipe]:
    return [load_recipe(p) for p in sorted(recipes_dir().glob("*.toml"))]


DEFAULT = "default"


def resolve_recipe(spec: str | None) -> Recipe:
    """A bundled recipe by name, or a recipe TOML file by path."""
    return load_recipe(resolve_toml(spec or DEFAULT, recipes_dir(), "recipe"))


def load_recipe(path: Path) -> Recipe:
    recipe = load_typed(Recipe, path, "recipe file", _CHOICES, _CHECKS)
    bundled = recipes_dir() / f"{recipe.name}.toml"
    if bundled.is_file() and not bundled.samefile(path):  # reports name recipes: one name, one recipe
        raise UsageError(f"recipe file {path} is named '{recipe.name}', like the bundled recipe: set name = \"...\" "
                         "in it (or rename the file) so that reports cannot confuse the two")
    return recipe


def match_layers(patterns: tuple[str, ...] | list[str], layers: list[str], source: str = "recipe") -> list[str]:
    """Layers matching any glob pattern; a pattern that matches nothing is an error."""
    chosen: list[str] = []
    for pat in patterns:
        hits = [name for name in layers if fnmatch.fnmatchcase(name, pat)]
        if not hits:
            sample = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
            raise UsageError(f"{source}: layer pattern '{pat}' matches no quantized layer (layers: {sample}; "
                             "see 'edgeres diagnose')")
        chosen += [h for h in hits if h not in chosen]
    return chosen
