"""Whether the model's output can be judged at all: logits that fit the spec's classes,
and a baseline that is better than chance somewhere.

A model that returns an embedding, features or a wrong head where the logits should be
still "runs": argmax over 16 values against labels 0..4 gives a baseline of nearly nothing,
and every drop after it is noise. These refuse or flag that before any number is judged.

Example::

    >>> at_or_below_chance([0.2, 0.25, 0.1, 0.0], [10, 12, 10, 8])
    True
    >>> at_or_below_chance([0.9, 0.2, 0.1, 0.0], [10, 12, 10, 8])
    False
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_unitablate.spec.model import Spec


def width_text(spec: Spec, width: int) -> str:
    """The refusal of logits whose width is not the number of ``classes:``, located at
    ``output:`` (which picked them) or else ``model:``."""
    assert spec.classes is not None
    named = len(spec.classes)
    if spec.output_line:
        where, what = spec.output_line, f"output: {spec.output!r} of model {spec.model!r}"
    else:
        where, what = spec.model_line, f"model {spec.model!r}"
    return (f"{spec.where(where)}: {what} gives {width} values per example, but classes: "
            f"(line {spec.classes_line}) names {named} classes. Logits need one value per "
            f"class, in index order: if the model returns features or an embedding beside "
            f"its logits, say which output holds the logits with output:; if the list is "
            f"wrong, give one name per output")


def at_or_below_chance(class_accuracy: Sequence[float], class_counts: Sequence[int]) -> bool:
    """Whether every class with examples is right at most as often as chance (one in the
    number of outputs, taken as the number of entries of ``class_accuracy``)."""
    chance = 1.0 / max(1, len(class_accuracy))
    seen = [float(a) for a, n in zip(class_accuracy, class_counts, strict=True) if n > 0]
    return bool(seen) and all(a <= chance + 1e-12 for a in seen)


def chance_text(spec: Spec, width: int, best: float) -> str:
    """What a run says once per spec when every class is at or below chance at baseline.

    >>> from pytest_unitablate.spec.loader import load_spec
    >>> spec = load_spec("s.yaml", text="unitablate: 1\\nmodel: m\\ndata: d\\nchecks:\\n"
    ...                  "  - layer: fc\\n    units: [0]\\n    expect:\\n"
    ...                  "      overall: {max_drop: 5%}\\n")
    >>> chance_text(spec, 5, 0.2)[:56]
    's.yaml:2: model m: every class is at or below chance at '
    """
    return (f"{spec.where(spec.model_line)}: model {spec.model}: every class is at or below "
            f"chance at baseline (the best class is right {best:.1%} of the time; chance "
            f"with {width} outputs is {1 / max(1, width):.1%}): no ablation can show what "
            f"this model knows. Is it the trained model, and does output: pick its logits?")


__all__ = ["at_or_below_chance", "chance_text", "width_text"]
