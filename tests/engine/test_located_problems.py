"""Every problem the engine finds while evaluating, located at the spec line that causes
it, through ``run_spec`` (the plugin shows the same text): a model that is not a module at
``model:``, NaN logits at ``model:``, an output without one logits tensor at ``output:``
(or ``model:``), data the model rejects or that cannot replay at its own line (``data:``,
``ranking_data:``, a spec's or a check's ``reference:``), units outside the layer at the
check, an unstated unit dimension at ``layer:``.
"""

from __future__ import annotations

import fnmatch
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec


class Net(nn.Module):
    def __init__(self, nan: bool = False, pair: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        self.nan, self.pair = nan, pair

    def forward(self, x: torch.Tensor) -> Any:
        out = self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))
        if self.nan:
            out = out * float("nan")
        return (out, out * 2) if self.pair else out


class Tokens(nn.Module):
    """A ``(N, T, C)`` layer: its units need ``channel_dim``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x)).mean(1))


def _data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _once() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield _data()


_CALLS = [0]


def _changing() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A data function whose inputs change on every call (not from torch's seeded
    generator, which every pass resets): passes cannot pair up."""
    _CALLS[0] += 1
    x, y = _data()
    return [(x + _CALLS[0], y)]


CHECK = """\
checks:
  - layer: act
    units: [1]
{check}    expect: {{overall: {{max_drop: 100%}}}}
"""


def _run(tmp_path: Path, head: str = "", check: str = "", layer: str = "act",
         **fixtures: Any) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + head
                    + CHECK.format(check=textwrap.indent(check, "    ")).replace(
                        "layer: act", f"layer: {layer}"))
    objects = {"model": Net().eval(), "data": _data(), **fixtures}
    cache = fixtures.pop("cache_dir", None)
    run = run_spec(path, fixtures=objects, cache_dir=cache)
    return [f"{item.outcome}: {item.message}" for item in run.items]


@pytest.mark.parametrize(("case", "head", "check", "fixtures", "expected"), [
    ("not a module", "", "", {"model": "resnet"},
     "error: *s.yaml:2: model 'model' gave a str, not a torch.nn.Module*"),
    ("one-shot data", "", "", {"data": _once()},
     "error: *s.yaml:3: the data is a one-shot iterator*"),
    ("one-shot ranking data", "ranking_data: rank\n", "", {"rank": _once()},
     "error: *s.yaml:4: *"),
    ("one-shot reference", "reference: ref\n", "ablation: mean\n", {"ref": _once()},
     "error: *s.yaml:4: *"),
    ("one-shot check reference", "", "ablation: mean\nreference: ref\n", {"ref": _once()},
     "error: *s.yaml:8: *"),
    ("NaN logits", "", "", {"model": Net(nan=True).eval()},
     "failed: *s.yaml:2: model 'model': batch 0: the model produced NaN or infinite *"),
    ("two outputs", "", "", {"model": Net(pair=True).eval()},
     "failed: *s.yaml:2: model 'model': batch 0: the model returned a tuple of 2 tensors*"),
    ("no such output", "output: 5\n", "", {"model": Net(pair=True).eval()},
     "failed: *s.yaml:4: model 'model': output: 5 is out of range*"),
    ("data the model rejects", "", "",
     {"data": (torch.randn(4, 3, 5), torch.zeros(4, dtype=torch.long))},
     "failed: *s.yaml:3: the model 'model' raised RuntimeError on the data 'data': *"),
    ("a reference the model rejects", "reference: ref\n", "ablation: mean\n",
     {"ref": (torch.randn(4, 3, 5), torch.zeros(4, dtype=torch.long))},
     "failed: *s.yaml:4: the model 'model' raised RuntimeError on the data 'ref': *"),
    ("a check's reference the model rejects", "", "ablation: resample\nreference: ref\n",
     {"ref": (torch.randn(4, 3, 5), torch.zeros(4, dtype=torch.long))},
     "failed: *s.yaml:8: the model 'model' raised RuntimeError on the data 'ref': *"),
    ("unpaired passes", "", "", {"data": _changing},
     "failed: *s.yaml:3: the pass with act units [[]1] ablated did not see the baseline's *"),
    ("unpaired passes, cached", "", "", {"data": _changing, "cache_dir": "CACHE"},
     "failed: *s.yaml:3: the baseline pass did not see the examples of the pass that "
     "fingerprinted the data*"),
])
def test_a_problem_is_located_at_its_line(tmp_path: Path, case: str, head: str, check: str,
                                          fixtures: dict[str, Any], expected: str) -> None:
    if fixtures.get("cache_dir") == "CACHE":
        fixtures = {**fixtures, "cache_dir": tmp_path / "cache"}
    (message,) = _run(tmp_path, head, check, **fixtures)
    assert fnmatch.fnmatch(message, expected), message


@pytest.mark.parametrize(("check", "layer", "expected"), [
    ("", "act", "failed: *s.yaml:5: unit 9 is out of range for layer 'act', *"),
    ("", "embed", "failed: *s.yaml:6: layer 'embed' outputs shape (N, 5, 4), *channel_dim*"),
    ("channel_dim: -1\n", "embed",
     "failed: *s.yaml:5: unit 9 is out of range for layer 'embed', * along dimension -1*"),
    ("channel_dim: 7\n", "embed", "failed: *s.yaml:5: *"),  # stated, and wrong: the check's
])
def test_units_outside_the_layer_and_an_unstated_dimension(
        tmp_path: Path, check: str, layer: str, expected: str) -> None:
    """A unit the layer does not have is the check's (line 5, where it starts); a layer
    whose unit dimension is unknown is the ``layer:`` line's (6)."""
    model = Tokens().eval() if layer == "embed" else Net().eval()
    data = (torch.randn(6, 5, 3), torch.zeros(6, dtype=torch.long)) if layer == "embed" \
        else _data()
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nchecks:\n  - units: [9]\n"
                    f"    layer: {layer}\n" + textwrap.indent(check, "    ")
                    + "    expect: {overall: {max_drop: 100%}}\n")
    run = run_spec(path, fixtures={"model": model, "data": data})
    (item,) = run.items
    assert fnmatch.fnmatch(f"{item.outcome}: {item.message}", expected), item.message


def test_a_model_on_another_device_is_located_at_model(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + CHECK.format(check=""))
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data()}, device="meta")
    (item,) = run.items
    assert fnmatch.fnmatch(str(item.message), "*s.yaml:2: model 'model': the model is on cpu "
                           "but the run's device is meta (run_spec(device=...)); move the "
                           "model where it is made (we never move it)"), item.message


def test_unpaired_plain_passes_and_ranking_data_are_located_at_their_data(
        tmp_path: Path) -> None:
    """A plain pass (one forward per check) that sees other examples is the data's
    fault, named by its pass; ranking data that changes is ``ranking_data:``'s."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + CHECK.format(check=""))
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _changing},
                   plain_passes=True)
    assert fnmatch.fnmatch(str(run.items[0].message), "*s.yaml:3: the pass with act units "
                           "[[]1] ablated did not see the baseline's examples*")
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nranking_data: rank\nchecks:\n"
                    "  - layer: act\n    top_units: {k: 2, class: 1, expect: "
                    "{overall: {max_drop: 100%}}}\n")
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data(),
                                   "rank": _changing})
    assert fnmatch.fnmatch(str(run.items[0].message), "*s.yaml:4: *"), run.items[0].message


def test_resample_of_data_with_one_example_is_located_at_the_layer(tmp_path: Path) -> None:
    """Without ``reference:`` an example never takes its own values: one example has no
    other to take them from, which is the check's ``layer:`` line's to say."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nchecks:\n  - units: [1]\n"
                    "    layer: act\n    ablation: resample\n"
                    "    expect: {overall: {max_drop: 100%}}\n")
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data(n=1)})
    (item,) = run.items
    assert item.outcome == "failed" and "s.yaml:6: " in str(item.message), item.message


def test_unpaired_evaluation_data_is_not_blamed_on_the_ranking_data(tmp_path: Path) -> None:
    """With ``ranking_data:`` in the spec, an ablated pass over the evaluation data that
    sees other examples is still the ``data:`` line's."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nranking_data: rank\n"
                    + CHECK.format(check=""))
    for plain in (False, True):
        run = run_spec(path, fixtures={"model": Net().eval(), "data": _changing,
                                       "rank": _data(seed=2)}, plain_passes=plain)
        assert fnmatch.fnmatch(str(run.items[0].message), "*s.yaml:3: the pass with act "
                               "units [[]1] ablated did not see*"), run.items[0].message


class _Jitter:
    """Ranking data with augmentation drawn from numpy's global generator, which no pass
    reseeds: each pass over it sees other inputs."""

    def __init__(self) -> None:
        self.x, self.y = _data(n=8, seed=3)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        noise = torch.from_numpy(np.random.default_rng().random(self.x.shape)).float()
        yield self.x + noise, self.y


def test_unpaired_passes_inside_a_ranking_sweep_are_located_at_the_ranking_data(
        tmp_path: Path) -> None:
    """A resample sweep runs its own passes (one per unit): when those see other
    examples than the sweep's baseline, the fault is the data the sweep ranks on,
    ``ranking_data:`` (line 4), not ``data:``."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nranking_data: rank\nchecks:\n"
                    "  - layer: act\n    ablation: resample\n    top_units: {k: 2, class: 1, "
                    "expect: {overall: {max_drop: 100%}}}\n")
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data(), "rank": _Jitter()})
    (item,) = run.items
    assert fnmatch.fnmatch(str(item.message), "*s.yaml:4: the pass with act units [[]0] "
                           "ablated did not see the baseline's examples*"), item.message


@pytest.mark.parametrize(("lines", "check", "expected"), [
    ("data: nope\n", "", "error: *s.yaml:3: data 'nope': it is not one of the fixtures "
     "given (data, model) *"),
    ("data: {a: data, b: nope}\n", "", "error: *s.yaml:3: data group 'b' 'nope': *"),
    ("data: data\nranking_data: nope\n", "", "error: *s.yaml:4: ranking_data 'nope': *"),
    ("data: {a: data, b: data}\nranking_data: {a: data, b: nope}\n", "",
     "error: *s.yaml:4: ranking_data group 'b' 'nope': *"),
    ("data: data\nreference: nope\n", "ablation: mean\n",
     "error: *s.yaml:4: reference 'nope': *"),
])
def test_a_name_that_is_no_fixture_says_which_line_named_it_and_as_what(
        tmp_path: Path, lines: str, check: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\n" + lines
                    + CHECK.format(check=textwrap.indent(check, "    ")))
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data()})
    messages = [f"{item.outcome}: {item.message}" for item in run.items]
    assert messages and all(fnmatch.fnmatch(m, expected) for m in messages), messages


@pytest.mark.parametrize(("min_examples", "expected"), [
    ("", ["passed: None"]),  # one example is enough by default
    ("min_examples: 2\n", ["failed: *s.yaml:9: data group 'b' has 1 example(s); the spec "
                           "needs at least 2"]),
])
def test_a_data_group_with_too_few_examples_is_located_at_its_expectation(
        tmp_path: Path, min_examples: str, expected: list[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: {a: data, b: one}\n" + min_examples
                    + "checks:\n  - layer: act\n    units: [1]\n    expect:\n"
                    + ("" if min_examples else "\n")
                    + "      b: {max_drop: 100%}\n")
    one = tuple(t[:1] for t in _data())
    run = run_spec(path, fixtures={"model": Net().eval(), "data": _data(), "one": one})
    messages = [f"{item.outcome}: {item.message}" for item in run.items]
    assert len(messages) == len(expected) and all(
        fnmatch.fnmatch(m, e) for m, e in zip(messages, expected, strict=True)), messages


@pytest.mark.parametrize("stored", [False, True])  # with a store the data is fingerprinted
@pytest.mark.parametrize(("data", "expected"), [
    (lambda: [_data()[0]], "batch 0 is a Tensor; expected a pair (inputs, labels)"),
    (lambda: [(_data()[0], _data()[1].float())],
     "batch 0: labels have dtype torch.float32; expected integer class indices"),
    (lambda: [(_data()[0], _data()[1] + 7)],
     "batch 0: label * is out of range for 3 classes (labels must be 0..2)"),
])
def test_batches_the_core_refuses_are_located_at_data(
        tmp_path: Path, data: Any, expected: str, stored: bool) -> None:
    messages = _run(tmp_path, data=data(), cache_dir=tmp_path / "cache" if stored else None)
    assert len(messages) == 1 and fnmatch.fnmatch(messages[0], f"failed: *s.yaml:3: {expected}"
                                                  ), messages


@pytest.mark.parametrize(("model", "data", "problem"), [
    (lambda: Net(nan=True), _data, "model"),  # the model's own fault: NaN logits
    (lambda: Net(pair=True), _data, "spec"),  # the spec must say which output: output:
    (Net, lambda: [_data()[0]], "spec"),  # batches without labels: the spec's data:
    (Net, _data, None),
])
def test_the_report_says_whose_problem_a_failure_is(tmp_path: Path, model: Any, data: Any,
                                                    problem: str | None) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + CHECK.format(check=""))
    (item,) = run_spec(path, fixtures={"model": model().eval(), "data": data()}).items
    assert item.record.get("problem") == problem, item.message
