"""Whether a baseline can be judged at all: at or below chance on every class."""

from __future__ import annotations

from pytest_unitablate.verdicts.fit import at_or_below_chance


def test_chance_is_one_in_the_number_of_outputs_and_exactly_chance_counts() -> None:
    assert at_or_below_chance([0.25, 0.25, 0.25, 0.25], [4, 4, 4, 4])  # exactly chance
    assert at_or_below_chance([0.5, 0.5], [2, 2])
    assert not at_or_below_chance([0.25, 0.26, 0.0, 0.0], [4, 50, 4, 4])  # one above
    assert not at_or_below_chance([0.51, 0.0], [100, 3])


def test_classes_without_examples_do_not_count() -> None:
    assert at_or_below_chance([0.1, 1.0, 0.0], [10, 0, 10])  # the 100% class has none
    assert not at_or_below_chance([0.0, 0.0], [0, 0])  # nothing to judge: nothing said


def test_the_refusal_and_the_chance_line_word_for_word() -> None:
    from pytest_unitablate.spec.loader import load_spec
    from pytest_unitablate.verdicts.fit import chance_text, width_text

    body = ("checks:\n  - layer: fc\n    units: [0]\n    expect:\n"
            "      overall: {max_drop: 5%}\n")
    plain = load_spec("s.yaml", text="unitablate: 1\nmodel: m\ndata: d\n"
                      "classes: [a, b, c, d, e]\n" + body)
    assert width_text(plain, 16) == (
        "s.yaml:2: model 'm' gives 16 values per example, but classes: (line 4) names 5 "
        "classes. Logits need one value per class, in index order: if the model returns "
        "features or an embedding beside its logits, say which output holds the logits with "
        "output:; if the list is wrong, give one name per output")
    picked = load_spec("s.yaml", text="unitablate: 1\nmodel: m\ndata: d\noutput: logits\n"
                       "classes: [a, b]\n" + body)
    assert width_text(picked, 3).startswith(
        "s.yaml:4: output: 'logits' of model 'm' gives 3 values per example, but classes: "
        "(line 5) names 2 classes.")
    assert chance_text(plain, 5, 0.2) == (
        "s.yaml:2: model m: every class is at or below chance at baseline (the best class is "
        "right 20.0% of the time; chance with 5 outputs is 20.0%): no ablation can show what "
        "this model knows. Is it the trained model, and does output: pick its logits?")
    assert "chance with 1 outputs is 100.0%" in chance_text(plain, 1, 0.0)


def test_a_class_with_one_example_counts_and_one_output_is_always_chance() -> None:
    assert not at_or_below_chance([0.9, 0.1], [1, 5])  # one example, right: above chance
    assert at_or_below_chance([0.8], [10])  # one output: chance is 100%


def test_accuracies_and_counts_must_be_per_class_alike() -> None:
    import pytest

    with pytest.raises(ValueError, match="shorter"):
        at_or_below_chance([0.1, 0.2], [5])
