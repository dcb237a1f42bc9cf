"""Models whose output is not one logits tensor: the spec's ``output:`` names the logits, in
every engine (named units, layer-wide sweeps, top_units); an ambiguous output is refused."""

from __future__ import annotations

import json

import pytest
import tiny_source
from tiny_source import ALL_ENGINES as BODY
from tiny_source import HEAD, TOP_ZERO, spec


@pytest.fixture
def outputs(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(outputs=tiny_source.OUTPUTS)
    return tiny


@pytest.mark.parametrize(("model", "output"), [("outputs:pair", "1"),
                                               ("outputs:named", "scores")])
def test_output_names_the_logits_in_every_engine(outputs: pytest.Pytester, model: str,
                                                 output: str) -> None:
    head = HEAD.replace("model: tinymodel:model", f"model: {model}\noutput: {output}")
    spec(outputs, BODY, head=head)
    outputs.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=4)


@pytest.mark.parametrize(("model", "message"), [
    ("outputs:pair", "spec.yaml:2: model 'outputs:pair': batch 0: the model returned a tuple "
                     "of 2 tensors; say which holds the logits with the spec key output:*"),
    ("outputs:named", "spec.yaml:2: model 'outputs:named': batch 0: the model returned a "
                      "dict with keys [[]'features', 'scores'[]]; say which holds the logits*"),
])
def test_an_ambiguous_output_is_refused_at_the_model_line(outputs: pytest.Pytester, model: str,
                                                          message: str) -> None:
    spec(outputs, BODY, head=HEAD.replace("model: tinymodel:model", f"model: {model}"))
    result = outputs.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines([message])
    assert "AttributeError" not in result.stdout.str()


def test_a_wrong_output_points_at_the_output_line(outputs: pytest.Pytester) -> None:
    head = HEAD.replace("model: tinymodel:model", "model: outputs:pair\noutput: 2")
    spec(outputs, BODY, head=head)
    result = outputs.runpytest("--unitablate-spec", "spec.yaml")
    result.stdout.fnmatch_lines(["spec.yaml:3: model 'outputs:pair': output: 2 is out of "
                                 "range: batch 0: the model returned 2 values (0..1)"])


WIDE_OUTPUTS = '''
import torch
from torch import nn
from tinymodel import Tiny

class Embedding(Tiny):
    """Returns a 16-wide embedding, and (as a dict) the 4 logits beside it."""

    def __init__(self, as_dict):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.as_dict = as_dict

    def forward(self, x):
        h = self.hidden(x)
        e = self.embed(h)
        return {"embedding": e, "logits": self.head(h)} if self.as_dict else e

class Shifted(Tiny):
    """Says class k+1 for class k: every class is right 0% of the time."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(4).roll(1, 0)); self.head.bias.zero_()

def embedding():
    return Embedding(False).eval()

def both():
    return Embedding(True).eval()

def shifted():
    return Shifted().eval()
'''


@pytest.mark.parametrize(("head", "where"), [
    ("model: wide:embedding", "spec.yaml:2: model 'wide:embedding' gives 16 values"),
    ("model: wide:both\noutput: embedding",
     "spec.yaml:3: output: 'embedding' of model 'wide:both' gives 16 values"),
    ("model: wide:both\noutput: logits",  # six names for four logits
     "spec.yaml:3: output: 'logits' of model 'wide:both' gives 4 values"),
])
def test_logits_that_do_not_fit_the_classes_are_refused_at_model_or_output(
        tiny: pytest.Pytester, head: str, where: str) -> None:
    """An embedding taken for logits ran and said "0 right at baseline"; now the line that
    picked it is named, whichever way the widths differ."""
    tiny.makepyfile(wide=WIDE_OUTPUTS)
    text = HEAD.replace("model: tinymodel:model", head)
    if "logits" in head:
        text = text.replace("three]", "three, four, five]")
    spec(tiny, BODY, head=text)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(errors=0, failed=4)
    result.stdout.fnmatch_lines([f"{where} per example, but classes: (line *) names * "
                                 f"classes. Logits need one value per class, in index order*"])
    assert result.ret == 2  # a spec problem: exit 2


def test_a_baseline_at_or_below_chance_everywhere_is_said_once(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(wide=WIDE_OUTPUTS)
    spec(tiny, BODY, head=HEAD.replace("model: tinymodel:model", "model: wide:shifted"))
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    text = result.stdout.str()
    assert text.count("every class is at or below chance at baseline") == 1, text
    result.stdout.fnmatch_lines(["*spec.yaml:2: model wide:shifted: every class is at or "
                                 "below chance at baseline (the best class is right 0.0% of "
                                 "the time; chance with 4 outputs is 25.0%)*"])
    # the tiny model itself is far above chance: nothing said
    spec(tiny, BODY)
    assert "chance at baseline" not in tiny.runpytest("--unitablate-spec",
                                                      "spec.yaml").stdout.str()


def test_one_layer_two_ablations_and_two_layers_are_kept_apart(tiny: pytest.Pytester) -> None:
    """Caches keyed without the ablation kind or without the layer would mix these up."""
    spec(tiny, """\
        checks:
          - layer: hidden
            units: [1]
            expect:
              one: {min_drop: 90%}
          - layer: hidden
            units: [1]
            ablation: {constant: 5}     # a huge class-one activation: class one survives
            expect:
              one: {max_drop: 0%}
          - layer: hidden
            every_unit:
              expect:
                three: {max_drop: 0%}   # no hidden unit touches class three
          - layer: head
            any_unit:
              expect:
                three: {min_drop: 90%}  # the head's unit 3 is class three's logit
        """)
    tiny.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=4)


def test_targets_are_masked_by_label_and_relative_drops_divide(tiny: pytest.Pytester) -> None:
    """On a model that misses two class-zero examples (80% of class zero right)."""
    tiny.makepyfile(imperfect=tiny_source.IMPERFECT)
    spec(tiny, """\
        checks:
          - layer: hidden
            units: [0]
            expect:
              zero: {min_relative_drop: 99%}   # 80 pp of 80%: all of it
          - layer: hidden
            units: [1]
            expect:
              zero: {max_drop: 0%}             # the mislabelled examples stay wrong
        """, head=HEAD.replace("data: tinymodel:data", "data: imperfect:data"))
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    result.assert_outcomes(passed=2)
    first = json.loads((tiny.path / "r.json").read_text())["items"][0]
    assert first["n"] == 10 and first["baseline"] == 0.8 and first["drop"] == 0.8


# Class zero's logit is hidden unit 0 plus hidden unit 4: the evaluation data shows class
# zero as input 0, the ranking split as input 4, so each split has a different top unit.
TWO_PATHS = '''
import torch
from torch import nn

class TwoPaths(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(5, 5)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(5)); self.hidden.bias.zero_()
    def forward(self, h):
        h = self.hidden(h)
        return torch.stack([h[:, 0] + h[:, 4], h[:, 1], h[:, 2], h[:, 3] + 0.5], dim=1)

def model():
    return TwoPaths().eval()

def _split(zero_input):
    labels = torch.arange(4).repeat(10)
    inputs = torch.eye(5)[torch.where(labels == 0, zero_input, labels)]
    return [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]

def data():
    return _split(0)

def ranking():
    return _split(4)
'''


@pytest.mark.parametrize(("ranking", "unit", "outcome"), [(False, 0, "passed"),
                                                         (True, 4, "failed")])
def test_top_units_rank_on_the_ranking_split_and_judge_on_the_data(
        tiny: pytest.Pytester, ranking: bool, unit: int, outcome: str) -> None:
    tiny.makepyfile(twopaths=TWO_PATHS)
    head = HEAD.replace("tinymodel:", "twopaths:")
    if ranking:
        head += "ranking_data: twopaths:ranking\n"
    spec(tiny, "checks:\n" + TOP_ZERO, head=head)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    result.assert_outcomes(**{outcome: 1})
    (item,) = json.loads((tiny.path / "r.json").read_text())["items"]
    assert item["deciding_units"] == [unit]
    # judged on the evaluation data: the unit ranked on the held-out split carries nothing here
    assert item["drop"] == (1.0 if unit == 0 else 0.0)
