"""The text a user reads when an expectation fails (torch-free).

Every message starts with a headline short enough for pytest's one-line summary (what,
which target, the measured drop, what was needed), then ``path:line:`` of the spec, what
was required and what was measured (baseline and ablated accuracy with their counts, the
drop with its paired interval, McNemar's p), and ends with the command that fixes it, the
way pytest-regressions ends with ``--force-regen``.

Example::

    >>> from pytest_unitablate.spec.model import Constraint
    >>> from pytest_unitablate.verdicts.measure import judge
    >>> c = Constraint("min_drop", 0.5)
    >>> m = Measurement.from_correct([True] * 10, [True] * 8 + [False] * 2)
    >>> text = failure_text(FailureContext(
    ...     where="specs/s.yaml:9", head="conv5[3]", ablation="zero", target="seven",
    ...     hint="pytest ... --unitablate-record-mode=failed"), c, m, judge(c, m))
    >>> print(text.splitlines()[0])
    conv5[3] seven: drop 20.0 pp, needs >= 50.0 pp
    >>> print(text.splitlines()[1])
    specs/s.yaml:9: conv5[3] (zero ablation): class 'seven' must have drop >= 50.0 pp
    >>> print(text.splitlines()[-1])
      To re-record: pytest ... --unitablate-record-mode=failed
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_unitablate.spec.model import OVERALL, Constraint
from pytest_unitablate.spec.rewrite import rounded_threshold
from pytest_unitablate.verdicts.calibration import Calibrated
from pytest_unitablate.verdicts.measure import (
    DEFAULT_LEVEL,
    Measurement,
    Verdict,
    drop_text,
    is_accuracy,
    metric_of,
)


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal (``n/a`` for None or NaN)."""
    return "n/a" if x is None or math.isnan(x) else f"{x * 100:.1f}"


@dataclass(frozen=True)
class FailureContext:
    """Where an expectation lives and how to re-record it (the item supplies it)."""

    where: str  # "path:line" of the spec entry
    head: str  # what is ablated, e.g. "layer3.0[0]"
    ablation: str  # "zero", "mean", "constant 0.5"
    target: str  # a class name or "overall"
    hint: str  # the command that re-records the threshold
    deciding: Sequence[int] | None = None
    notes: Sequence[str] = field(default_factory=tuple)
    #: what a unit of the check is called: ``unit`` (a channel) or ``head``
    noun: str = "unit"
    #: what a target is called: ``class``, or ``group`` for one of data's named groups
    kind: str = "class"
    #: the weights that were tested: ``sha256 1a2b... (checkpoints/candidate.pt)``; empty
    #: when the front end did not hash them
    weights: str = ""


def failure_text(ctx: FailureContext, constraint: Constraint, m: Measurement,
                 verdict: Verdict) -> str:
    """The full message of a failed expectation."""
    what = "overall accuracy" if ctx.target == OVERALL else f"{ctx.kind} {ctx.target!r}"
    unit_text = ""
    if ctx.deciding is not None:
        label = f"deciding {ctx.noun}" + ("" if len(ctx.deciding) == 1 else "s")
        unit_text = f"   {label}: {', '.join(map(str, ctx.deciding))}"
    lo, hi = m.ci
    required = constraint.describe()
    kind = constraint.kind
    relative = "relative" in kind
    if is_accuracy(kind):
        low, high = m.bound(kind, m.ci_level), m.bound("max" + kind[3:], m.ci_level)
        right = round(m.baseline * m.n)
        lines = [
            headline(ctx, constraint, m),
            f"{ctx.where}: {what} must have {required} (its own accuracy, nothing ablated)",
            f"  accuracy {pct(m.baseline)}% ({right}/{m.n})   {m.ci_level * 100:g}% CI "
            f"[{pct(low)}, {pct(high)}]% (Wilson)   required {required}   missed by "
            f"{-verdict.margin * 100:.1f} points (judged on the {verdict.by})",
        ]
    elif m.metric == "logprob":
        assert m.diffs is not None
        what = "the examples" if ctx.target == OVERALL else (
            f"the examples of {ctx.target!r}" if ctx.kind == "class"
            else f"the examples of group {ctx.target!r}")
        lines = [
            headline(ctx, constraint, m),
            f"{ctx.where}: {ctx.head} ({ctx.ablation} ablation): {what} must have {required}",
            f"  mean log p(true class): baseline {m.baseline:.3f}   ablated {m.ablated:.3f} "
            f"nats   n={m.n}{unit_text}",
            f"  drop     {m.drop:.3f} nats   {m.ci_level * 100:g}% CI [{lo:.3f}, {hi:.3f}] "
            f"nats (paired t)   required {required}   missed by {-verdict.margin:.3f} nats "
            f"(judged on the {verdict.by})",
            f"  paired t-test p={m.p_value:.3g} (sd of the per-example drops "
            f"{m.diffs.sd:.3f} nats)",
        ]
    elif m.table is None:  # shares of several resample draws
        assert m.diffs is not None
        lines = [
            headline(ctx, constraint, m),
            f"{ctx.where}: {ctx.head} ({ctx.ablation} ablation): {what} must have {required}",
            f"  baseline {pct(m.baseline)}%   ablated {pct(m.ablated)}% (mean over the "
            f"resample draws)   n={m.n}{unit_text}",
            f"  drop     {pct(m.drop)} pp   {m.ci_level * 100:g}% CI [{pct(lo)}, {pct(hi)}] pp "
            f"(paired t over examples)   required {required}   "
            f"{_missed_by(verdict.margin, relative)} (judged on the {verdict.by})",
            f"  paired t-test p={m.p_value:.3g}",
        ]
    else:
        table = m.table
        lines = [
            headline(ctx, constraint, m),
            f"{ctx.where}: {ctx.head} ({ctx.ablation} ablation): {what} must have {required}",
            f"  baseline {pct(m.baseline)}% ({table.a + table.b}/{m.n})   ablated "
            f"{pct(m.ablated)}% ({table.a + table.c}/{m.n})   n={m.n}{unit_text}",
            f"  drop     {pct(m.drop)} pp   {m.ci_level * 100:g}% CI [{pct(lo)}, {pct(hi)}] pp "
            f"(paired, Newcombe)   required {required}   "
            f"{_missed_by(verdict.margin, relative)} (judged on the {verdict.by})",
        ]
        if relative:
            share = m.value(kind)
            lines.append("  relative drop undefined: no example right at baseline"
                         if math.isnan(share) else
                         f"  relative drop {pct(share)}% of the baseline")
        lines.append(f"  McNemar exact p={m.p_value:.3g} ({table.b} flipped to wrong, "
                     f"{table.c} to right)")
    lines.extend(f"  {note}" for note in ctx.notes)
    if ctx.weights:
        lines.append(f"  Weights under test: {ctx.weights}")
    honest = " (only for an honest retrain: it becomes a reference model)" \
        if "record-mode=calibrate" in ctx.hint else ""
    lines.append(f"  To re-record{honest}: {ctx.hint}")
    return "\n".join(lines)


def _missed_by(margin: float, relative: bool) -> str:
    """``missed by 12.3 pp`` (``points`` for a relative drop, a share of the baseline);
    a relative drop of a target with none right at baseline has no margin.

    >>> _missed_by(-0.123, False), _missed_by(float("nan"), True)
    ('missed by 12.3 pp', 'missed (no relative drop without an example right at baseline)')
    """
    if math.isnan(margin):
        return "missed (no relative drop without an example right at baseline)"
    return f"missed by {-margin * 100:.1f} {'points' if relative else 'pp'}"


def forgotten_headline(ctx: FailureContext, m: Measurement,
                       reference_baseline: float | None) -> str:
    """The first line of a forgotten class's failure.

    >>> m = Measurement.from_correct([True] * 5 + [False] * 5, [False] * 10)
    >>> ctx = FailureContext(where="s.yaml:9", head="conv5-u3", ablation="zero",
    ...                      target="square", hint="cmd")
    >>> forgotten_headline(ctx, m, 0.87)
    "conv5-u3 square: class 'square' fell from 87.0% to 50.0% at baseline: its units can \
no longer be judged"
    """
    fell = (f"fell from {pct(reference_baseline)}% to {pct(m.baseline)}%"
            if reference_baseline is not None else f"is at {pct(m.baseline)}%")
    return (f"{ctx.head} {ctx.target}: {ctx.kind} {ctx.target!r} {fell} at baseline: its "
            f"units can no longer be judged")


def forgotten_text(ctx: FailureContext, constraint: Constraint, m: Measurement,
                   verdict: Verdict, reference_baseline: float | None) -> str:
    """The full message of a ``min_*`` drop that the target's baseline cannot reach: the
    model under test no longer gets enough of the class right for any ablation to take
    that much away (a fine-tune that forgot the class). Its own failure, not a spec
    problem and not "use more examples": the numbers measured, what the references had
    (``reference_baseline``, the lowest baseline of the calibration's models, when known),
    and what to look at."""
    lines = failure_text(ctx, constraint, m, verdict).split("\n")
    lines[0] = forgotten_headline(ctx, m, reference_baseline)
    right = round(m.baseline * m.n)
    relative = "relative" in constraint.kind
    # what losing every right example would show (a relative drop: all of it, or, with
    # none right, nothing: the rule the item was judged forgotten by)
    reach = (1.0 if right else 0.0) if relative else m.baseline
    then = (f" (the reference models had at least {pct(reference_baseline)}%)"
            if reference_baseline is not None else "")
    extra = [
        f"  forgotten: {right} of {m.n} right at baseline ({pct(m.baseline)}%){then}; even "
        f"if every one were lost, the drop would be {pct(reach)}"
        f"{'%' if relative else ' pp'}, below the required "
        f"{drop_text(constraint.kind, constraint.threshold)}",
        f"  The model under test no longer knows {ctx.kind} {ctx.target!r}: look at what its "
        f"training changed for it (data, labels, recipe). If the {ctx.kind} was dropped on "
        f"purpose, remove its checks; do not re-record the threshold to fit.",
    ]
    return "\n".join([*lines[:-1], *extra])


def headline(ctx: FailureContext, constraint: Constraint, m: Measurement) -> str:
    """The first line of a failure: what was ablated, the target, the measured value and
    what it needed, in the units of the constraint (pp for a drop, % of the baseline for a
    relative drop, nats for a log-probability drop). pytest's short test summary shows
    this line.

    >>> from pytest_unitablate.spec.model import Constraint
    >>> m = Measurement.from_correct([True] * 4, [True, True, True, False])
    >>> ctx = FailureContext(where="s.yaml:9", head="layer3.0-u0", ablation="zero",
    ...                      target="four", hint="cmd")
    >>> headline(ctx, Constraint("min_relative_drop", 0.5), m)
    'layer3.0-u0 four: relative drop 25.0%, needs >= 50.0%'
    """
    op = ">=" if constraint.kind.startswith("min") else "<="
    kind = constraint.kind
    needs = drop_text(kind, constraint.threshold)
    value = drop_text(kind, m.value(kind))
    label = "log-prob drop" if m.metric == "logprob" else \
        "accuracy" if is_accuracy(kind) else _what_drop(kind)
    return f"{ctx.head} {ctx.target}: {label} {value}, needs {op} {needs}"


def _what_drop(kind: str) -> str:
    return "relative drop" if "relative" in kind else "drop"


#: The ``path:line: `` a located message starts with (group 1: ``path:line``).
LOCATION = re.compile(r"^(.+?:\d+): ")


def problem_text(text: str) -> str:
    """A located problem (``path:line: message``) with a headline first: the message
    without its location, up to its first ``;`` or parenthesised aside (at most 100
    characters), for pytest's one-line summary.

    >>> print(problem_text("s.yaml:6: model Tiny has no layer 'hiden'; did you mean 'hidden'?"))
    model Tiny has no layer 'hiden'
    s.yaml:6: model Tiny has no layer 'hiden'; did you mean 'hidden'?
    """
    body = LOCATION.sub("", text.split("\n", 1)[0], count=1)
    cut = re.search(r"; | \((?=[a-z])", body)  # an aside, not a shape such as (N, 6, 16)
    head = body[:cut.start()] if cut else body
    if len(head) > 100:
        head = head[:97] + "..."
    return f"{head}\n{text}"


def disarmed_text(ctx: FailureContext, kind: str, m: Measurement, reason: str,
                  first: bool = False) -> str:
    """The failure of an item whose recorded threshold would disarm it (not written).
    ``first``: no threshold was ever recorded (the unit does not carry the class, rather
    than no longer).

    >>> from pytest_unitablate.verdicts.measure import Measurement
    >>> m = Measurement.from_correct([True] * 10, [True] * 10)
    >>> ctx = FailureContext(where="s.yaml:9", head="layer3.0-u0", ablation="zero",
    ...                      target="four", hint="cmd")
    >>> print(disarmed_text(ctx, "min_drop", m, "a min_drop of 0.0 pp passes ...")[:70])
    s.yaml:9: layer3.0-u0 no longer carries class 'four' (drop 0.0 pp, 95%
    """
    what = "overall accuracy" if ctx.target == OVERALL else f"{ctx.kind} {ctx.target!r}"
    measured = _measured(kind, m)
    floor = "record floor" in reason
    if kind.startswith("min"):
        verb = ("carries too little of" if floor else
                "does not carry" if first else "no longer carries")
        head = f"{ctx.head} {verb} {what} ({measured})"
        advice = "Remove this check or choose another unit."
    else:
        head = f"{ctx.head} damages {what} too much to bound ({measured})"
        advice = "Keep the old threshold or remove this check."
    why = "" if floor else "; such a threshold could never fail"
    return f"{ctx.where}: {head}: not recorded, because {reason}{why}. {advice}"


def _measured(kind: str, m: Measurement) -> str:
    """``drop 10.3 pp, 95% CI [1.6, 19.0] pp`` in the units of ``kind``."""
    if is_accuracy(kind):
        return (f"accuracy {pct(m.baseline)}%, {m.ci_level * 100:g}% CI "
                f"[{pct(m.bound(kind, m.ci_level))}, "
                f"{pct(m.bound('max' + kind[3:], m.ci_level))}]%")
    lo, hi = m.ci
    unit = " nats" if m.metric == "logprob" else " pp"
    plain = _plain(kind)

    def bare(x: float) -> str:
        return drop_text(plain, x).rsplit(" ", 1)[0]

    return (f"{'log-prob drop' if m.metric == 'logprob' else 'drop'} "
            f"{drop_text(plain, m.drop)}, {m.ci_level * 100:g}% CI [{bare(lo)}, {bare(hi)}]"
            f"{unit}")


def _plain(kind: str) -> str:
    """The absolute kind of the same metric (intervals are of the drop, not relative)."""
    return "min_logprob_drop" if "logprob" in kind else "min_drop"


def unguardable_text(where: str, item_id: str, kind: str, found: Calibrated, reason: str,
                     named: bool = False) -> str:
    """Why record mode ``calibrate`` did not write an item's threshold: the reference
    models' range, what the calibrated threshold would be and why it cannot guard, and
    what could.

    >>> from pytest_unitablate.verdicts.calibration import Point, calibrated_threshold
    >>> c = calibrated_threshold("min_drop", [Point(0.016, 0.0), Point(0.885, 0.8),
    ...                                       Point(0.803, 0.7)])
    >>> print(unguardable_text("s.yaml:9", "layer3.1-any-three-min_drop", "min_drop", c,
    ...                        "it passes whatever").splitlines()[0])
    s.yaml:9: layer3.1-any-three-min_drop: unguardable over 3 models (measured 1.6-88.5 pp)
    """
    fixes = []
    if named and kind.startswith("min"):
        fixes.append("any_unit instead of a named unit (a retrain moves a role to another "
                     "index), or identity: signature (it finds the role again in most "
                     "retrains, not all)")
    if kind.startswith("min") and metric_of(kind) == "accuracy" and not is_accuracy(kind):
        fixes.append("min_logprob_drop instead of an accuracy drop (it varies less between "
                     "retrains)")
    fixes.append("another layer, or more reference models if one of them is an outlier")
    return "\n".join([
        f"{where}: {item_id}: unguardable over {found.models} models (measured "
        f"{found.range_text()})",
        f"  the calibrated {kind} would be "
        f"{drop_text(kind, rounded_threshold(kind, found.threshold))}: {reason}.",
        "  Honest retrains already reach what a destroyed unit shows: such a guard would "
        "fail them or catch nothing.",
        "  What could guard it: " + "; ".join(fixes) + "."])


def weak_text(ctx: FailureContext, kind: str, m: Measurement, reason: str,
              needed: int | None, other: Measurement | None, share: float) -> str:
    """The failure of an item whose recorded ``min_*`` bound would guard too little of the
    effect (not written): the effect, n, how many examples would make a guard, and what
    the other measure shows for the same ablation (``other``).

    >>> from pytest_unitablate.verdicts.measure import Measurement
    >>> m = Measurement.from_correct([True] * 58, [True] * 52 + [False] * 6)
    >>> o = Measurement.from_logprob([-0.1] * 58, [-0.1] * 40 + [-1.5] * 18)
    >>> ctx = FailureContext(where="s.yaml:9", head="blocks.1.mlp-u7", ablation="zero",
    ...                      target="eight", hint="cmd")
    >>> text = weak_text(ctx, "min_drop", m, "a min_drop of 1.6 pp keeps 15% ...", 150, o, 0.5)
    >>> print(text.splitlines()[0])
    blocks.1.mlp-u7 eight: drop 10.3 pp on 58 examples is too uncertain to guard: not recorded
    """
    what = "overall accuracy" if ctx.target == OVERALL else f"{ctx.kind} {ctx.target!r}"
    lines = [f"{ctx.head} {ctx.target}: {_measured(kind, m).split(',')[0]} on {m.n} examples "
             f"is too uncertain to guard: not recorded",
             f"{ctx.where}: {ctx.head} carries {what} ({_measured(kind, m)}, n={m.n}), but "
             f"a guard would be weak: not recorded",
             f"  {reason}: a retrain could lose over {1 - share:.0%} of the effect and "
             f"still pass."]
    fixes = []
    if needed is not None:
        fixes.append(f"evaluate on about {needed} examples of the target (now {m.n})")
    if other is not None and other.metric != m.metric:
        alt = "min_logprob_drop" if other.metric == "logprob" else "min_drop"
        lo = other.bound(alt, other.ci_level)
        keeps = lo / other.drop if other.drop > 0 else float("nan")
        good = other.drop > 0 and keeps >= share
        fixes.append(f"guard it with {alt}: the same ablation shows {_measured(alt, other)}"
                     + (f", a bound of {drop_text(alt, lo)} keeps {keeps:.0%} of it"
                        if good else ", no stronger"))
    if fixes:
        lines.append("  To guard it: " + "; or ".join(fixes) + ".")
    lines.append("  (--unitablate-record-min-share sets the share a recorded bound must "
                 "keep; 0 turns this off.)")
    return "\n".join(lines)


def missing_threshold_text(where: str, item_id: str, kind: str, m: Measurement,
                           hint: str) -> str:
    """The message of an item whose threshold is still ``null``."""
    return (f"{where}: {item_id}: no threshold recorded yet ({kind}: null); "
            f"measured {'log-prob drop' if m.metric == 'logprob' else 'drop'} "
            f"{drop_text(_plain(kind), m.drop)}\n  To record it: {hint}")


def warn_text(where: str, item_id: str, constraint: Constraint, verdict: Verdict) -> str:
    """The warning of an expectation that passed inside its warn band."""
    kind = constraint.kind
    band = f"{(constraint.warn_margin or 0.0) * 100:g}%"
    return (f"{where}: {item_id} passes by only {drop_text(_plain(kind), verdict.margin)} "
            f"(warn_margin {band})")


def unsupportable_text(where: str, item_id: str, constraint: Constraint, hits: int,
                       n: int) -> str | None:
    """Why a ``min_*`` threshold cannot be met even if every right example were lost.

    ``hits`` of the target's ``n`` examples are right at baseline. Returns ``None`` when
    the threshold is reachable (or is not a ``min_*`` threshold).

    >>> from pytest_unitablate.spec.model import Constraint
    >>> unsupportable_text("s.yaml:3", "x", Constraint("min_drop", 0.9), hits=5, n=10)[:40]
    's.yaml:3: x: the target has 10 example(s'
    >>> unsupportable_text("s.yaml:3", "x", Constraint("min_drop", 0.4), hits=5, n=10) is None
    True
    """
    c = constraint
    if c.threshold is None or not c.kind.startswith("min") or "logprob" in c.kind or \
            is_accuracy(c.kind):
        return None  # a log-probability can always fall further; an accuracy is no drop
    best = Measurement.from_correct([True] * hits + [False] * (n - hits), [False] * n,
                                    level=c.confidence or DEFAULT_LEVEL)
    reach = best.bound(c.kind, c.confidence) if c.confidence else best.value(c.kind)
    if reach + 1e-12 >= c.threshold:
        return None
    what = ("the point estimate" if c.confidence is None
            else f"the {c.confidence * 100:g}% lower bound")
    return (f"{where}: {item_id}: the target has {n} example(s), {hits} right at baseline; "
            f"even if every one were lost, {what} would be {reach * 100:.1f}, below the "
            f"required {c.threshold * 100:.1f}. Use more examples or a lower threshold.")


def dead_text(ctx: FailureContext, layer: str, dead: Mapping[int, float],
              record: Mapping[str, Any], m: Measurement) -> str:
    """The failure of an ``identity: signature`` check whose recorded unit is dead at its
    own index in the model under test (``dead``: unit -> its profile's share of the
    recorded one), instead of a silent match to a neighbour. ``record`` holds the
    mapping and the recorded drop; ``m`` what the matched unit measured.

    >>> from pytest_unitablate.verdicts.measure import Measurement
    >>> m = Measurement.from_correct([True] * 10, [True] * 9 + [False])
    >>> ctx = FailureContext(where="s.yaml:9", head="mlp-u37", ablation="zero",
    ...                      target="eight", hint="cmd")
    >>> rec = {"recorded_units": [37], "matched_units": [12], "similarity": [0.91],
    ...        "recorded_drop": 0.103, "constraint": "min_drop"}
    >>> print(dead_text(ctx, "mlp", {37: 0.0}, rec, m).splitlines()[0])
    mlp-u37 eight: unit 37 of mlp is dead in the model under test
    """
    noun = ctx.noun
    units = ", ".join(map(str, sorted(dead)))
    plural = "s" if len(dead) > 1 else ""
    kind = str(record.get("constraint") or "min_drop")
    lines = [f"{ctx.head} {ctx.target}: {noun}{plural} {units} of {layer} "
             f"{'are' if plural else 'is'} dead in the model under test",
             f"{ctx.where}: {ctx.head}: the recorded {noun}{plural} {units} of {layer} "
             f"{'are' if plural else 'is'} dead at {'their' if plural else 'its'} own index "
             f"in the model under test: ablating {'them' if plural else 'it'} changes "
             f"nothing (damage profile at " + ", ".join(
                 f"{dead[u]:.1%}" for u in sorted(dead)) + " of the recorded one), as "
             "after pruning to a constant"]
    recorded = list(record.get("recorded_units") or [])
    matched = list(record.get("matched_units") or [])
    sims = list(record.get("similarity") or [])
    for r, u, sim in zip(recorded, matched, sims, strict=False):
        if r in dead and u is not None:
            lines.append(f"  signature matching would take {noun} {u} instead (similarity "
                         f"{sim:.2f}): not taken; a neighbour with a similar profile is not "
                         f"the {noun} this check protects")
    was = record.get("recorded_drop")
    now = drop_text(_plain(kind), m.drop)
    lines.append(f"  drop of {ctx.target!s}: "
                 + (f"{drop_text(_plain(kind), float(was))} when recorded, " if was is not None
                    else "")
                 + f"{now} now with {noun}{'s' if len(matched) > 1 else ''} "
                 f"{', '.join(map(str, matched))} ablated")
    lines.append(f"  (A {noun} counts as dead only while the layer's other recorded {noun}s "
                 f"keep their indices.) If that is intended, remove the check; or, to "
                 f"protect the new model's {noun}s, delete the signatures sidecar and the "
                 f"spec's signatures: line, then record again with record mode new.")
    return "\n".join(lines)


def no_match_text(where: str, item_id: str, layer: str, gone: Sequence[Any],
                  minimum: float, matches: Mapping[int, Any], noun: str = "unit") -> str:
    """The failure of an ``identity: signature`` check whose unit has no match.

    ``gone`` and ``matches`` hold match records (``recorded``, ``unit``, ``similarity``,
    ``best_unit``, ``best_similarity`` attributes, as
    :class:`pytest_unitablate.core.identity.Match` has them); ``noun`` is ``unit`` or
    ``head``.

    >>> from types import SimpleNamespace as M
    >>> g = M(recorded=10, unit=7, similarity=0.41, best_unit=7, best_similarity=0.41)
    >>> print(no_match_text("s.yaml:9", "x", "layer3.0", [g], 0.75, {10: g}).splitlines()[0])
    s.yaml:9: x: no unit of layer3.0 matches the recorded unit 10 (best: unit 7, 0.41)
    """
    lines = []
    for g in gone:
        head = (f"{where}: {item_id}: no {noun} of {layer} matches the recorded {noun} "
                f"{g.recorded} (best: {noun} {g.best_unit}, {g.best_similarity:.2f})")
        lines.append(head)
        claimed = [r for r, m in matches.items() if m.unit == g.best_unit and r != g.recorded]
        if claimed:
            lines.append(f"  {noun} {g.best_unit} is the match of recorded {noun} "
                         f"{claimed[0]} (one-to-one); the best {noun} left for {g.recorded} "
                         f"is " + (f"{noun} {g.unit} ({g.similarity:.2f})" if g.unit is not None
                                   else f"none (the layer has fewer {noun}s than were "
                                        f"recorded)"))
    lines.append(f"  required similarity >= {minimum:.2f} (cosine of class-damage profiles; "
                 f"min_similarity in the check's identity:)")
    lines.append(f"  The {noun} this check protects is gone: no {noun} of the model under "
                 f"test plays its role (the classes that depend on it). If that is intended, "
                 f"remove the check; or, to protect the new model's {noun}s, delete the "
                 f"signatures sidecar and the spec's signatures: line, then record again "
                 f"with record mode new.")
    return "\n".join(lines)


__all__ = [
    "LOCATION",
    "FailureContext",
    "dead_text",
    "disarmed_text",
    "failure_text",
    "forgotten_headline",
    "forgotten_text",
    "headline",
    "missing_threshold_text",
    "no_match_text",
    "pct",
    "problem_text",
    "unsupportable_text",
    "warn_text",
    "weak_text",
]
