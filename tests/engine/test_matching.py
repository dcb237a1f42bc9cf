"""``identity: signature`` in the engine, through ``run_spec`` (no pytest subprocess): the
sidecar read once per spec and located when it is wrong, profiles per layer and unit kind
(cached in the store), and the one-to-one match per model, spec and layer.

The signatures are written here by hand from :func:`damage_profiles` /
:func:`head_profiles` of the reference model (what record mode writes), so the engine's
side is checked against the core functions, not against itself. The MLP is the plugin
tests' (``tests/identity_source.py``): hidden unit k detects class k (k < 4) on noisy
one-hot inputs, not 100% right at baseline.
"""

from __future__ import annotations

import fnmatch
import textwrap
from pathlib import Path
from typing import Any

import identity_source
import pytest
import torch
import transformer_source
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.core import identity
from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.refs import Subject, mapping_lookup
from pytest_unitablate.engine.run import evaluate_spec
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.signatures import Signatures, write_signatures

_IDMODEL: dict[str, Any] = {}
exec(identity_source.SOURCE, _IDMODEL)  # the plugin tests' model, written to idmodel.py there
PERM = _IDMODEL["PERM"]  # new position i holds old unit PERM[i]


def _mlp(permute: bool = False, prune: bool = False) -> nn.Module:
    model: nn.Module = _IDMODEL["model"](permute=permute, prune=prune, destroy=False)
    return model


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    data: list[tuple[torch.Tensor, torch.Tensor]] = _IDMODEL["data"]()
    return data


SPEC = """\
unitablate: 1
model: model
data: data
classes: [zero, one, two, three]
{signatures}checks:
  - layer: "1"
    units: [1]
    identity: signature
    expect:
      one: {{min_drop: 50%}}
  - layer: "1"
    units: [2]
    identity: {{by: signature, min_similarity: 0.9}}
    expect:
      two: {{min_drop: 50%}}
"""


def _sidecar(path: Path, model: nn.Module, units: dict[int, int], layer: str = "1",
             profiles: Any = None) -> str:
    """Write the signatures of ``units`` (recorded index -> the reference model's unit
    whose profile it gets) and return the ``signatures:`` line."""
    if profiles is None:
        profiles = identity.damage_profiles(model, _data(), layer, num_classes=4)
    sig = Signatures(layers={layer: {u: tuple(profiles[src]) for u, src in units.items()}},
                     classes=("zero", "one", "two", "three"))
    sha = write_signatures(path, sig)
    return f"signatures: {{file: {path.name}, sha256: {sha}}}\n"


def _spec(tmp_path: Path, name: str = "spec", units: dict[int, int] | None = None) -> Path:
    line = _sidecar(tmp_path / f"{name}.signatures.json", _mlp(), units or {1: 1, 2: 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(signatures=line))
    return path


def _records(spec: Path, model: nn.Module, **kwargs: Any) -> dict[str, dict[str, Any]]:
    run = run_spec(spec, fixtures={"model": model, "data": _data()}, **kwargs)
    return {r["id"]: r for r in run.records}


def test_recorded_units_are_found_after_a_permutation(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    same = _records(spec, _mlp())
    assert same["1-u1-one-min_drop"]["matched_units"] == [1]
    assert same["1-u2-two-min_drop"]["matched_units"] == [2]
    moved = _records(spec, _mlp(permute=True))
    one, two = moved["1-u1-one-min_drop"], moved["1-u2-two-min_drop"]
    assert (one["matched_units"], two["matched_units"]) == ([3], [5])  # PERM[3] == 1 ...
    assert one["similarity"] == [pytest.approx(1.0)] and two["outcome"] == "passed"
    assert one["outcome"] == "passed" and one["drop"] > 0.5
    assert one["dead_units"] is None and two["min_similarity"] == 0.9


def test_a_pruned_unit_is_dead_and_its_partner_is_the_assigned_one(tmp_path: Path) -> None:
    records = _records(_spec(tmp_path), _mlp(prune=True))
    one = records["1-u1-one-min_drop"]
    assert one["dead_units"] == [1] and one["matched_units"] == [4]
    assert one["outcome"] == "failed" and "dead" in one["reason"]


def test_each_spec_reads_its_own_sidecar_in_one_engine(tmp_path: Path) -> None:
    """Two specs in one engine (one pytest session): each is matched with its own
    signatures, so the second spec's unit 1 (recorded with unit 2's profile) goes to 2."""
    first = _spec(tmp_path, "a")
    second = _spec(tmp_path, "b", units={1: 2, 2: 1})
    engine = Engine()
    lookup = mapping_lookup({"model": _mlp(), "data": _data()})
    a = {r["id"]: r for r in evaluate_spec(first, lookup, engine).records}
    b = {r["id"]: r for r in evaluate_spec(second, lookup, engine).records}
    assert a["1-u1-one-min_drop"]["matched_units"] == [1]
    assert b["1-u1-one-min_drop"]["matched_units"] == [2], b["1-u1-one-min_drop"]
    assert b["1-u2-two-min_drop"]["matched_units"] == [1]


def test_profiles_are_per_data(tmp_path: Path) -> None:
    """One model and engine, two data sets (two specs in one session): each gets its own
    profiles, equal to the core's on that data."""
    spec = load_spec(_spec(tmp_path))
    engine = Engine()
    model, data = _mlp(), _data()
    swapped = [(x[:, [0, 2, 1, 3]], y) for x, y in data]
    for which in (data, swapped):
        subject = Subject(model=model, data=which)
        got = engine.matching.profiles(spec, subject, spec.checks[0])
        # a forward and a backward pass, averaged over each class's examples
        assert_f32_close(got, identity.damage_profiles(model, which, "1", num_classes=4),
                         terms=64, depth=4)


def test_the_match_is_per_model(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    engine = Engine()
    data = _data()
    for model, want in ((_mlp(), [1]), (_mlp(permute=True), [3])):
        run = evaluate_spec(spec, mapping_lookup({"model": model, "data": data}), engine)
        assert {r["id"]: r for r in run.records}["1-u1-one-min_drop"]["matched_units"] == want


def test_profiles_are_kept_in_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    spec = _spec(tmp_path)
    calls: list[tuple[str, dict[str, Any]]] = []
    real = identity.damage_profiles

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append((args[2], kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(identity, "damage_profiles", counted)
    first = _records(spec, _mlp(permute=True), cache_dir=tmp_path / "cache")
    # once for the layer (both checks), on the run's device, with the layer's channel
    # dimension and the model's width
    assert calls == [("1", {"num_classes": 4, "channel_dim": 1, "device": "cpu",
                            "output": None})]
    again = _records(spec, _mlp(permute=True), cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and again == first


@pytest.mark.parametrize(("sidecar", "message"), [
    ("missing", "spec.yaml:5: the signatures file * recorded in the spec is missing"),
    ("changed", "spec.yaml:5: the signatures file * has sha256 *, not the *"),
])
def test_a_broken_sidecar_is_located_at_the_signatures_line(
        tmp_path: Path, sidecar: str, message: str) -> None:
    spec = _spec(tmp_path)
    path = tmp_path / "spec.signatures.json"
    if sidecar == "missing":
        path.unlink()
    else:
        path.write_text(path.read_text().replace("0.", "1.", 1))
    run = run_spec(spec, fixtures={"model": _mlp(), "data": _data()})
    assert [item.outcome for item in run.items] == ["failed", "failed"]
    for item in run.items:
        assert fnmatch.fnmatch(str(item.message), f"*{message}*"), item.message


def test_without_a_signatures_line_the_first_identity_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(signatures=""))
    (tmp_path / "spec.signatures.json").write_text("{}")  # there, but not in the spec
    engine = Engine()
    spec = load_spec(path)
    with pytest.raises(ItemProblem, match=r"spec\.yaml:8: .*spec\.signatures\.json exists but"):
        engine.matching.signatures(spec)
    # record mode replaces a sidecar the spec does not name yet, so it is no problem then
    assert Engine().matching.signatures(spec, recording=True) is None
    (tmp_path / "spec.signatures.json").unlink()
    assert Engine().matching.signatures(spec) is None


def test_a_named_sidecar_that_is_gone_is_a_problem_even_while_recording(tmp_path: Path
                                                                          ) -> None:
    spec = load_spec(_spec(tmp_path))
    (tmp_path / "spec.signatures.json").unlink()
    with pytest.raises(ItemProblem, match=r"spec\.yaml:5: .* is missing"):
        Engine().matching.signatures(spec, recording=True)


def test_signatures_are_read_once_per_spec(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    matching = Engine().matching
    first = matching.signatures(spec)
    (tmp_path / "spec.signatures.json").unlink()  # read already: not read again
    assert matching.signatures(spec) is first and first is not None
    assert sorted(first.units("1")) == [1, 2]


HEAD_SPEC = """\
unitablate: 1
model: model
data: data
output: 0
{signatures}checks:
  - layer: net.encoder.layers.1.self_attn
    unit: head
    num_heads: 4
    units: [2]
    identity: signature
    expect:
      overall: {{max_drop: 100%}}
"""


class Wrapped(nn.Module):
    """``net`` returning ``(logits, inputs)`` with a fifth class no label uses (so the
    model's width, not the labels, sets the profiles' width)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return torch.cat([logits, torch.full_like(logits[:, :1], -10.0)], 1), x


WRAPPED_SPEC = """\
unitablate: 1
model: model
data: data
output: 0
{signatures}checks:
  - layer: net.1
    units: [1]
    identity: signature
    expect:
      1: {{min_drop: 50%}}
"""


def test_profiles_use_the_models_width_and_the_specs_output(tmp_path: Path) -> None:
    profiles = identity.damage_profiles(Wrapped(_mlp()), _data(), "net.1", num_classes=5,
                                        output=0)
    assert profiles.shape == (6, 5)
    line = _sidecar(tmp_path / "w.signatures.json", _mlp(), {1: 1}, layer="net.1",
                    profiles=profiles)
    (tmp_path / "w.yaml").write_text(WRAPPED_SPEC.format(signatures=line))
    run = run_spec(tmp_path / "w.yaml", fixtures={"model": Wrapped(_mlp(permute=True)),
                                                  "data": _data()})
    record = run.records[0]
    assert record["outcome"] == "passed" and record["matched_units"] == [3], run.items


def test_a_sidecar_of_another_class_count_is_located_at_the_signatures_line(
        tmp_path: Path) -> None:
    profiles = identity.damage_profiles(_mlp(), _data(), "1", num_classes=4)[:, :3]
    line = _sidecar(tmp_path / "spec.signatures.json", _mlp(), {1: 1, 2: 2},
                    profiles=profiles)
    (tmp_path / "spec.yaml").write_text(SPEC.format(signatures=line))
    run = run_spec(tmp_path / "spec.yaml", fixtures={"model": _mlp(), "data": _data()})
    assert [item.outcome for item in run.items] == ["failed", "failed"]
    assert "spec.yaml:5: the recorded signatures have 3 classes but the model gives 4" \
        in str(run.items[0].message)


class NoGrad(nn.Module):
    """The MLP with its read-out under ``torch.no_grad``: nothing to differentiate."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.net[1](self.net[0](x))
        with torch.no_grad():
            return self.net[2](hidden)


def test_a_model_that_cannot_be_differentiated_is_a_located_failure(tmp_path: Path) -> None:
    """Profiles need a backward pass through the network after the layer: a model that
    forbids it fails its items with a located message, not an internal traceback. It is
    reported as anything the model's forward raises on the data is: at ``data:``."""
    profiles = identity.damage_profiles(_mlp(), _data(), "1", num_classes=4)
    line = _sidecar(tmp_path / "spec.signatures.json", _mlp(), {1: 1, 2: 2}, layer="net.1",
                    profiles=profiles)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(signatures=line).replace('layer: "1"', 'layer: "net.1"'))
    run = run_spec(spec, fixtures={"model": NoGrad(), "data": _data()})
    assert [item.outcome for item in run.items] == ["failed", "failed"]
    assert "spec.yaml:3: the model 'model' raised RuntimeError" in str(run.items[0].message)


def test_heads_are_matched_by_measured_head_profiles(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A head check's profiles are :func:`head_profiles` (one ablated pass per head), not
    the channel estimate: with all four heads recorded from the model itself, the checked
    head finds itself."""
    tinyvit: dict[str, Any] = {}
    exec(textwrap.dedent(transformer_source.SOURCE), tinyvit)
    model, data = Wrapped(tinyvit["model"]()), tinyvit["data"]()
    layer = "net.encoder.layers.1.self_attn"
    profiles = identity.head_profiles(model, data, layer, num_classes=5, output=0)
    line = _sidecar(tmp_path / "h.signatures.json", model, {h: h for h in range(4)},
                    layer=layer, profiles=profiles)
    (tmp_path / "h.yaml").write_text(HEAD_SPEC.format(signatures=line))
    calls: list[dict[str, Any]] = []
    real = identity.head_profiles

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(identity, "head_profiles", spy)
    run = run_spec(tmp_path / "h.yaml", fixtures={"model": model, "data": data})
    assert calls == [{"num_classes": 5, "num_heads": 4, "device": "cpu", "output": 0}]
    record = run.records[0]
    assert record["outcome"] == "passed" and record["matched_units"] == [2]
    assert record["similarity"] == [pytest.approx(1.0, abs=1e-6)]


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The unit sets of every scan a layer's named checks start, one list per scan."""
    from pytest_unitablate.engine import named

    seen: list[list[Any]] = []
    real = named.scan

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(list(kwargs["units"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(named, "scan", spy)
    return seen


def test_matched_signature_checks_join_their_layers_scan(tmp_path: Path,
                                                        rows: list[list[Any]]) -> None:
    """Once a layer's match is made (by its first signature check), the layer's named
    checks are planned with the matched units: one scan with a row per check, not one
    pass per check."""
    records = _records(_spec(tmp_path), _mlp(permute=True))
    assert rows == [[3, 5]]  # unit 1 went to 3, unit 2 to 5: one scan, a row each
    assert records["1-u1-one-min_drop"]["outcome"] == "passed"
    assert records["1-u2-two-min_drop"]["outcome"] == "passed"


def test_a_match_below_its_min_similarity_is_left_out_of_the_layers_scan(
        tmp_path: Path, rows: list[list[Any]]) -> None:
    """In the pruned model recorded unit 2 keeps unit 2 at a similarity of about 0.9994:
    under a ``min_similarity`` of 0.9999 its check fails on the match (no ablated pass of
    its own), so the scan that unit 1's check starts (its match, unit 4) plans no row for
    it."""
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("min_similarity: 0.9}", "min_similarity: 0.9999}"))
    two = _records(spec, _mlp(prune=True))["1-u2-two-min_drop"]
    assert two["matched_units"] == [2] and 0.99 < two["similarity"][0] < 0.9999
    assert two["outcome"] == "failed"
    assert rows == [[4]]


def test_a_check_whose_units_cannot_be_addressed_is_left_out_of_the_layers_scan(
        tmp_path: Path, rows: list[list[Any]]) -> None:
    """A second check of the layer states a unit dimension the layer does not have: its
    own item reports that; the first check's scan plans no row for it."""
    spec = tmp_path / "d.yaml"
    spec.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        checks:
          - layer: "1"
            units: [1]
            expect: {overall: {max_drop: 100%}}
          - layer: "1"
            units: [2]
            channel_dim: 7
            expect: {overall: {max_drop: 100%}}
        """))
    run = run_spec(spec, fixtures={"model": _mlp(), "data": _data()})
    assert [(r["outcome"], r["problem"]) for r in run.records] == [
        ("passed", None), ("failed", "spec")]
    assert rows == [[1]]


def test_a_layers_scan_plans_the_named_checks_of_that_layer_and_ablation_only(
        tmp_path: Path, rows: list[list[Any]]) -> None:
    """The first check of layer "1" plans every later named check of that layer with the
    same ablation (unit 4), past a check of another layer, and not a check of the same
    layer with another ablation: each of those starts its own scan."""
    spec = tmp_path / "p.yaml"
    spec.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        checks:
          - {layer: "1", units: [1], expect: {overall: {max_drop: 100%}}}
          - {layer: "0", units: [3], expect: {overall: {max_drop: 100%}}}
          - {layer: "1", units: [2], ablation: mean, expect: {overall: {max_drop: 100%}}}
          - {layer: "1", units: [4], expect: {overall: {max_drop: 100%}}}
        """))
    run = run_spec(spec, fixtures={"model": _mlp(), "data": _data()})
    assert [r["outcome"] for r in run.records] == ["passed"] * 4
    assert rows == [[1, 4], [3], [2]]
