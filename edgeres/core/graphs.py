"""Graph walks shared by the back ends, on plain node ids.  LIGHT layer: stdlib only."""

from __future__ import annotations

from collections.abc import Iterable


def float_chain(order: list[str], kind: dict[str, str], users: dict[str, list[str]], islands: Iterable[str],
                stops: set[str], never: Iterable[str] = ()) -> list[str]:
    """The nodes to leave in float with ``islands`` (ops with no int8 kernel, float whatever is done): each
    island and every node after it up to a node whose kind is in ``stops`` (a convolution or matrix product,
    whose int8 kernel is the point, or an op that only moves data, exact in int8), plus any node that only
    feeds such nodes (a GELU's ``x / sqrt(2)`` before its erf).  Quantizing the arithmetic between islands
    would only round the float chain to 8 bits after every op; left float, it is quantized once, where the
    next stop takes it.

    ``order``: every node, producers before consumers; ``kind``: node -> op type; ``users``: node -> the
    nodes that read its outputs; ``never``: nodes never kept (they are handled otherwise).
    """
    never = set(never)
    kept: set[str] = set()
    todo = [n for n in islands if n in kind and kind[n] not in stops and n not in never]
    while todo:  # forwards from each island, up to the next stop
        node = todo.pop()
        if node not in kept:
            kept.add(node)
            todo.extend(u for u in users.get(node, []) if kind.get(u) not in stops and u not in never)
    for node in reversed(order):  # consumers first: a node whose every reader is kept is kept too
        readers = users.get(node, [])
        if node not in kept and node not in never and kind.get(node) not in stops and readers \
                and all(u in kept for u in readers):
            kept.add(node)
    return [n for n in order if n in kept]
