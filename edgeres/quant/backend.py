"""What quantization needs from a format: the :class:`Quantizer` interface, and :class:`Backend`.

LIGHT layer.  The interface is owned here, by its consumer: the search and the
diagnosis are written once against it, and each format in
:mod:`edgeres.backends` implements it (TFLite, ONNX).  A :class:`Backend`
pairs one quantizer with how its models run on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeres.core.errors import UsageError
from edgeres.quant.recipes import Recipe, match_layers
from edgeres.quant.stats import ActivationStats


class Quantizer(Protocol):
    """A float model calibrated once, then quantized any number of ways.

    ``layers`` maps stable layer names (:mod:`edgeres.core.layers`) to the
    format's own node or tensor names; ``stats`` holds the calibration
    statistics every recipe's ranges come from.
    """

    layers: dict[str, list[str]]
    layer_ops: dict[str, list[str]]
    stats: ActivationStats

    def quantize(self, recipe: Recipe, keep_float: list[str]) -> tuple[bytes, dict]:
        """The model quantized per ``recipe`` with ``keep_float`` layers in float, and its details."""

    def collect_stats(self, x: np.ndarray) -> ActivationStats:
        """Statistics of the float model's activations on ``x`` (for diagnosis)."""

    def stat_layers(self) -> dict[str, str]:
        """Statistics key -> layer."""

    def layer_outputs(self, data: bytes | None, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each layer's output on ``x`` in the quantized model ``data`` (None: the float model)."""


@dataclass
class Backend:
    """One output format, calibrated: build a recipe, and run what was built."""

    name: str                 # "tflite" | "onnx" | ...: the registry key
    suffix: str               # file suffix of its artifacts
    quantizer: Quantizer
    threads: int = 2
    delegate: str | None = None  # how its models run here (trials, validation)
    float_layers_allowed: bool = True  # False when the target needs a full-integer model
    #: applied to every model built (e.g. a float softmax after int8 logits: edgeres.backends.heads)
    finish: Callable[[bytes], bytes] | None = None
    #: applied to every built model's outputs on the host (a full-integer model that outputs logits)
    host_activation: str | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.quantizer.layers)

    def build(self, recipe: Recipe, keep_float: list[str] | None = None) -> tuple[bytes, dict]:
        """Build ``recipe``; layers in ``keep_float`` stay float on top of the recipe's own patterns."""
        from edgeres.core.quiet import quiet

        recipe = recipe.for_backend(self.name)
        keep = match_layers(recipe.keep_float, self.layers, f"recipe {recipe.name}")
        keep += [name for name in keep_float or [] if name not in keep]
        if keep and not self.float_layers_allowed:
            raise UsageError(f"the target needs a full-integer model, but {len(keep)} layer(s) would stay float "
                             f"({', '.join(keep[:3])}); drop keep_float from the recipe")
        with quiet():  # converter chatter, not ours
            data, details = self.quantizer.quantize(recipe, keep)
            return (self.finish(data) if self.finish is not None and data else data), details

    def runner(self, data: bytes, tmp: Path):
        from edgeres.core.errors import ModelError, unloadable_build
        from edgeres.core.quiet import quiet
        from edgeres.core.runtime import open_runner

        path = tmp / f"trial{self.suffix}"
        path.write_bytes(data)
        try:
            with quiet():
                r = open_runner(path, threads=self.threads, delegate=self.delegate)
        except ModelError as exc:  # a candidate the runtime refuses: one failed candidate, not a bad input
            raise unloadable_build(exc, f"the {self.name} int8 model") from None
        r.host_activation = self.host_activation
        return r
