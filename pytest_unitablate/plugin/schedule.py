"""The order of spec items on xdist workers (torch-free).

xdist hands items out from the front of the collection: ``--dist load`` sends each worker
a run of neighbouring items, then one or a few at a time, so the items running at the
same moment on different workers are near each other in the collection. When two of
them need the same evaluation, one worker computes it while the other waits on its lock.

Items share work at three levels: the items of one check share its ablation; the checks
of one layer share the layer's sweeps, unit order and identity profiles; every item
shares the baseline (one short pass, computed first by whoever gets there). So on a
worker the items are reordered: the items of one check stay together (one worker does
that ablation and the next item reads it), and checks take turns across the (spec,
layer) groups, so neighbouring runs of items work on different layers.

Example::

    >>> spread([("a", 1), ("a", 1), ("a", 2), ("b", 3), ("b", 3)])
    [0, 1, 3, 4, 2]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def spread(keys: Sequence[tuple[Hashable, Hashable]]) -> list[int]:
    """Positions of ``keys`` (one ``(group, check)`` per item) in their new order: the
    items of a check together (first-seen order), checks round-robin over the groups."""
    groups: dict[Hashable, dict[Hashable, list[int]]] = {}
    for position, (group, check) in enumerate(keys):
        groups.setdefault(group, {}).setdefault(check, []).append(position)
    queues = [list(checks.values()) for checks in groups.values()]
    depth = max(map(len, queues), default=0)
    return [position for k in range(depth) for queue in queues if k < len(queue)
            for position in queue[k]]


__all__ = ["spread"]
