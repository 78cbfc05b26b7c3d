"""Stable layer names for ops in converted models.  LIGHT layer: stdlib only.

Converters name tensors and nodes after the TensorFlow ops they came from,
e.g. ``resnet20_1/layer1.0.conv1_1/convolution;resnet20_1/layer1.0.bn1_1/...``
(TFLite) or ``resnet20_1/layer1.0.conv1_1/convolution/merged_input:0``
(tf2onnx).  :func:`resolve_layer` maps such names back to the Keras layer
that owns the op, so diagnosis tables, recipes' ``keep_float`` patterns and
search reports use the same names on both back ends.
"""

from __future__ import annotations

import re

_SUFFIX = re.compile(r"_\d+$")
# Which Keras layer "owns" a fused op: the one with the weights, then merges, then the rest.
_WEIGHTED = ("Conv", "Dense", "DepthwiseConv", "SeparableConv")
_MERGE = ("Add", "Multiply", "Subtract", "Concatenate", "Average", "Maximum", "Minimum")


def _rank(kind: str) -> int:
    if kind.startswith(_WEIGHTED):
        return 0
    if kind in _MERGE:
        return 1
    if "Pool" in kind:
        return 2
    return 3


def candidates(names: list[str]) -> list[str]:
    """Path segments of converter names, with Keras' call-count suffix removed."""
    out: list[str] = []
    for name in names:
        for part in name.split(";"):
            for seg in part.split(":")[0].split("/"):
                for cand in (_SUFFIX.sub("", seg), seg):
                    if cand and cand not in out:
                        out.append(cand)
    return out


def resolve_layer(names: list[str], layer_types: dict[str, str]) -> str | None:
    """The Keras layer a converted op belongs to, or None when none is named."""
    found = [c for c in candidates(names) if c in layer_types]
    if not found:
        return None
    return min(found, key=lambda n: (_rank(layer_types[n]), found.index(n)))


def ops_by_layer(sites: list[tuple[str, str]], layer_types: dict[str, str]) -> dict[str, list[str]]:
    """{op: [layers]} of (op, converter name) pairs, each layer once, ops sorted; a name that resolves to no
    layer stands for itself."""
    where: dict[str, list[str]] = {}
    for op, name in sites:
        layer = resolve_layer([name], layer_types) or name
        if layer not in where.setdefault(op, []):
            where[op].append(layer)
    return dict(sorted(where.items()))


def describe_ops(where: dict[str, list[str]], limit: int = 3) -> str:
    """``NEG (in layer_normalization); ERF (in a, b, c, ...)``: one line for a report or an error."""
    return "; ".join(f"{op} (in {', '.join(layers[:limit])}{', ...' if len(layers) > limit else ''})"
                     for op, layers in where.items())


def float_ops_note(where: dict[str, list[str]], engine: str) -> str:
    """The report's line on the ops ``engine`` runs in float inside an int8 model (``where``: op -> layers)."""
    return (f"{engine} has no int8 kernel for some of these ops, and the arithmetic after them up to the next "
            f"convolution or matrix product stays float with them (quantized once there, not after every op): "
            f"{describe_ops(where)}")
