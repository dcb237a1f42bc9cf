"""Unit identity across trainings: a unit's signature, and one-to-one matching by it.

Unit indices are arbitrary across trainings: the "seven detector" that is unit 10 of
``layer3.0`` in one model can be unit 3 in a retrain. A named-unit check can therefore
protect what a unit *is* instead of its index: a **signature** recorded from the
reference model, found again in the model under test by matching.

The signature is the unit's **class-damage profile**: for each class ``k``, the
first-order estimate of how much the log-probability of the true class drops, averaged
over the examples of class ``k``, when the unit alone is zeroed
(:func:`pytest_unitablate.core.unit_order.class_damage_sums`; one forward and one backward
pass over the data give it for every unit of the layer). It describes the unit's *role*
(which classes depend on it), which is what a named-unit check protects; on the demo
models it finds the unit that really carries the class more often than the unit's
activations (Li et al. 2016's correlation), see ``docs/identity.md``.

Similarity is the cosine of two profiles (1: the same role, 0: unrelated; scale-free, so a
retrain that makes a unit twice as important still matches). :func:`match_units` assigns
the recorded units of a layer to distinct units of the model under test so that the total
*score* is largest (the Hungarian method, ``scipy.optimize.linear_sum_assignment``), not
greedily: two recorded units never claim the same unit. The score weighs the size of the
effect too: the cosine times the square root of the ratio of the smaller profile norm to
the larger (:data:`SCALE_POWER`), so a weak unit whose profile has the right shape does not
win over the class's strong carrier of a slightly different shape; the similarity a match
reports, and ``min_similarity`` judges, is the cosine of the pair it was assigned.

Example::

    >>> import numpy as np
    >>> recorded = {10: [0.0, 0.0, 1.0], 4: [1.0, 0.0, 0.0]}
    >>> current = np.array([[0.9, 0.1, 0.0], [0.0, 0.5, 2.0], [0.0, 1.0, 0.0]])
    >>> m = match_units(recorded, current)
    >>> m[10].unit, round(m[10].similarity, 2), m[4].unit
    (1, 0.97, 0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.core.unit_order import class_damage_sums
from pytest_unitablate.errors import UnitAblateError


class SignatureMismatchError(UnitAblateError):
    """Recorded signatures cannot be compared with this model's (another class count)."""


def damage_profiles(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    num_classes: int | None = None,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
) -> npt.NDArray[np.float64]:
    """The class-damage profile of every unit of ``layer``: shape ``(units, classes)``.

    Entry ``[u, k]`` is the mean, over the examples labelled ``k``, of the first-order
    estimate of the loss of true-class log-probability when unit ``u`` alone is zeroed
    (0 for a class without examples). ``num_classes`` pads the columns to the model's
    output width. The model's weights and train/eval flags are left as they were.
    """
    sums, counts = class_damage_sums(model, data, layer, channel_dim=channel_dim,
                                     device=device, output=output, batch_size=batch_size)
    width = max(num_classes or 0, sums.shape[1])
    profile = np.zeros((sums.shape[0], width), dtype=np.float64)
    seen = counts > 0
    profile[:, : sums.shape[1]][:, seen] = sums[:, seen] / counts[seen]
    return profile


def head_profiles(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    num_classes: int | None = None,
    num_heads: int | None = None,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
) -> npt.NDArray[np.float64]:
    """The class-damage profile of every attention head of ``layer``: ``(heads, classes)``.

    Entry ``[h, k]`` is the mean, over the examples labelled ``k``, of the loss of
    true-class log-probability when head ``h`` alone is zeroed, *measured* with one
    ablated pass per head (a layer has few heads; a channel's profile is a first-order
    estimate instead, :func:`damage_profiles`). Columns as there.
    """
    from pytest_unitablate.core.ablation import ablate
    from pytest_unitablate.core.data import iter_batches
    from pytest_unitablate.core.evaluation import eval_mode, model_device, select_logits
    from pytest_unitablate.core.heads import head_site

    site = head_site(model, layer, num_heads)
    target = torch.device(device) if device is not None else model_device(model)

    def true_logp() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        values, labels = [], []
        with eval_mode(model):
            for inputs, y in iter_batches(data, batch_size=batch_size, device=target):
                logits = select_logits(call_model(model, inputs), output)
                logp = torch.log_softmax(logits.double(), 1)
                values.append(logp.gather(1, y.view(-1, 1)).squeeze(1).cpu())
                labels.append(y.cpu())
        return torch.cat(values).numpy(), torch.cat(labels).numpy().astype(np.int64)

    base, labels = true_logp()
    width = max(num_classes or 0, int(labels.max()) + 1 if labels.size else 0)
    counts = np.bincount(labels, minlength=width)
    profile = np.zeros((site.num_heads, width), dtype=np.float64)
    for head in range(site.num_heads):
        with ablate(model, {layer: [head]}, unit="head", num_heads=num_heads):
            ablated, _ = true_logp()
        sums = np.bincount(labels, weights=base - ablated, minlength=width)
        seen = counts > 0
        profile[head, seen] = sums[seen] / counts[seen]
    return profile


@dataclass(frozen=True)
class Match:
    """Where a recorded unit went: its partner in the model under test, and how sure.

    ``unit`` is ``None`` when the layer has fewer units than were recorded and this one got
    no partner. ``best_unit``/``best_similarity`` is the most similar unit overall, which
    differs from ``unit`` when another recorded unit claimed it.
    """

    recorded: int
    unit: int | None
    similarity: float
    best_unit: int
    best_similarity: float

    def describe(self) -> str:
        """``unit 10 -> unit 3 (similarity 0.93)``."""
        if self.unit is None:
            return f"unit {self.recorded} -> no unit left to match"
        return f"unit {self.recorded} -> unit {self.unit} (similarity {self.similarity:.2f})"


def cosine_matrix(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
                  ) -> npt.NDArray[np.float64]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (0 for a zero row).

    >>> cosine_matrix(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])).tolist()
    [[1.0, 0.0]]
    """
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    an = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    bn = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    out: npt.NDArray[np.float64] = np.clip(an @ bn.T, -1.0, 1.0)
    return out


#: A recorded unit is dead in the model under test when the profile at its own index has
#: at most this share of the recorded profile's norm: ablating it does nothing (a unit
#: pruned to a constant 0, or a ReLU that never fires). A merely weak unit (a retrain that
#: renumbered the units put an unimportant one at this index) keeps far more than this.
DEAD_RATIO = 1e-6


def dead_units(recorded: Mapping[int, Sequence[float]], profiles: npt.NDArray[np.float64],
               ratio: float = DEAD_RATIO) -> dict[int, float]:
    """Recorded units whose own index is dead in the model under test (pruned to a
    constant, or no class depends on it any more): ``{unit: current norm / recorded
    norm}`` for each whose ratio is at most ``ratio`` (recorded profiles that were already
    zero are skipped).

    >>> dead_units({0: [1.0, 0.0], 1: [0.0, 2.0]}, np.array([[0.0, 0.0], [0.0, 1.5]]))
    {0: 0.0}
    """
    found: dict[int, float] = {}
    for unit, signature in sorted(recorded.items()):
        before = float(np.linalg.norm(np.asarray(signature, dtype=np.float64)))
        if before <= 0 or unit >= profiles.shape[0]:
            continue
        share = float(np.linalg.norm(profiles[unit])) / before
        if share <= ratio:
            found[unit] = share
    return found


#: The power of the norm ratio in the assignment score (0: the cosine alone).
SCALE_POWER = 0.5


def match_scores(ref: npt.NDArray[np.float64], profiles: npt.NDArray[np.float64],
                 sim: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The assignment score of every (recorded, current) pair: the cosine ``sim`` times
    ``(smaller norm / larger norm) ** SCALE_POWER``.

    >>> ref = np.array([[1.0, 0.0]])
    >>> cur = np.array([[0.2, 0.0], [0.9, 0.3]])
    >>> match_scores(ref, cur, cosine_matrix(ref, cur)).round(3).tolist()
    [[0.447, 0.924]]
    """
    na = np.linalg.norm(ref, axis=1)[:, None]
    nb = np.linalg.norm(profiles, axis=1)[None, :]
    big = np.maximum(na, nb)
    ratio = np.divide(np.minimum(na, nb), big, out=np.zeros_like(sim), where=big > 0)
    out: npt.NDArray[np.float64] = sim * ratio ** SCALE_POWER
    return out


def match_units(recorded: Mapping[int, Sequence[float]], profiles: npt.NDArray[np.float64]
                ) -> dict[int, Match]:
    """Assign each recorded unit (index -> profile) to a distinct unit of ``profiles``
    (``(units, classes)``) maximising the total score (:func:`match_scores`: the cosine
    weighed by the size of the effect; Hungarian method).

    The assignment is deterministic for given profiles. Raises
    :class:`SignatureMismatchError` when the profiles have different class counts.
    """
    from scipy.optimize import linear_sum_assignment

    keys = sorted(recorded)
    if not keys:
        return {}
    ref = np.asarray([list(recorded[k]) for k in keys], dtype=np.float64)
    if ref.shape[1] != profiles.shape[1]:
        raise SignatureMismatchError(
            f"the recorded signatures have {ref.shape[1]} classes but the model gives "
            f"{profiles.shape[1]}: they were recorded on another model or class list")
    sim = cosine_matrix(ref, profiles)
    rows, cols = linear_sum_assignment(match_scores(ref, profiles, sim), maximize=True)
    partner = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
    out: dict[int, Match] = {}
    for i, key in enumerate(keys):
        best = int(np.argmax(sim[i])) if sim.shape[1] else -1
        unit = partner.get(i)
        out[key] = Match(
            recorded=key, unit=unit,
            similarity=float(sim[i, unit]) if unit is not None else float("nan"),
            best_unit=best, best_similarity=float(sim[i, best]) if best >= 0 else float("nan"))
    return out


__all__ = ["Match", "SignatureMismatchError", "cosine_matrix", "damage_profiles",
           "match_scores", "match_units"]
