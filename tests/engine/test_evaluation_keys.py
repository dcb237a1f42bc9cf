"""What the engine's evaluations are keyed by, in the store and in memory, and what the
baseline pass keeps for the sweeps after it.

A store key that leaves out something that changes the numbers makes one evaluation read
another's entry (a wrong answer nobody sees); one that holds something irrelevant only
costs a recomputation. So every field is checked here against the value it must carry,
and every way two checks' ablated passes differ against two different keys.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.core.data import data_fingerprint
from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.evaluations import (
    ENTRY_FORMAT,
    eval_arrays,
    eval_result,
    row_result,
)
from pytest_unitablate.engine.fingerprint import structure_sha256, weights_sha256
from pytest_unitablate.engine.refs import Subject, mapping_lookup
from pytest_unitablate.engine.run import evaluate_spec
from pytest_unitablate.engine.settings import EngineSettings
from pytest_unitablate.engine.store import DiskStore
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.version import __version__


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def _data(seed: int = 1, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


CHECKS = """\
checks:
  - layer: act
    units: [3, 1]
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1, 3]
    ablation: mean
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1, 3]
    ablation: {constant: 0.5}
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1, 3]
    ablation: {constant: 0.25}
    expect: {overall: {max_drop: 100%}}
  - layer: act
    name: ref-mean
    units: [1, 3]
    ablation: mean
    reference: ref
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1, 3]
    ablation: resample
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1, 3]
    ablation: {resample: {draws: 2}}
    expect: {overall: {max_drop: 100%}}
  - layer: conv
    units: [1, 3]
    expect: {overall: {max_drop: 100%}}
  - layer: act
    units: [1]
    expect: {overall: {max_drop: 100%}}
"""


def _bound(tmp_path: Path, body: str = CHECKS, store: bool = True, seed: int | None = 0,
           head: str = "") -> tuple[Engine, Spec, Subject]:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + head + body)
    spec = load_spec(path)
    engine = Engine(EngineSettings(seed=seed),
                    DiskStore(tmp_path / "cache") if store else None)
    objects = {"model": Net().eval(), "data": _data(), "ref": _data(seed=7, n=5),
               "ref2": _data(seed=8, n=6)}
    return engine, spec, engine.bind(spec, mapping_lookup(objects))


def test_the_identity_holds_everything_that_decides_an_evaluation(tmp_path: Path) -> None:
    engine, spec, subject = _bound(tmp_path, seed=3)
    ident = engine.evals.identity(spec, subject.model, subject.data)
    assert ident == {
        "weights": weights_sha256(subject.model), "model": structure_sha256(subject.model),
        "data": data_fingerprint(subject.data), "output": None, "position": None,
        "device": "cpu",
        "dtype": "float32", "seed": 3, "torch": str(torch.__version__),
        "unitablate": __version__, "entries": ENTRY_FORMAT}
    assert engine.evals.identity(spec, subject.model, subject.data) is ident  # once
    other_model = Net().eval()
    with torch.no_grad():
        other_model.fc.bias.add_(1.0)
    theirs = engine.evals.identity(spec, other_model, subject.data)
    assert theirs["weights"] == weights_sha256(other_model) != ident["weights"]
    assert engine.evals.weights_hash(other_model) == theirs["weights"]
    assert engine.evals.weights_hash(subject.model) == ident["weights"]
    other = engine.evals.identity(spec, subject.model, subject.references["ref"])
    assert other["data"] == data_fingerprint(subject.references["ref"]) != ident["data"]
    # without a store nothing is hashed: the data is not even fingerprinted
    engine, spec, subject = _bound(tmp_path, store=False)
    from pytest_unitablate.engine import baselines as evaluations

    def refuse(data: Any) -> str:
        raise AssertionError("fingerprinted without a store")

    original = evaluations.data_fingerprint
    evaluations.data_fingerprint = refuse  # type: ignore[assignment]
    try:
        assert not engine.evals.identity(spec, subject.model, subject.data)["data"]
    finally:
        evaluations.data_fingerprint = original


def test_every_difference_between_ablated_passes_is_in_the_store_key(tmp_path: Path
                                                                      ) -> None:
    engine, spec, subject = _bound(tmp_path)
    ev = engine.evals
    ident = ev.identity(spec, subject.model, subject.data)
    keys = [ev.ablated_key(spec, subject, c, c.units) for c in spec.checks]
    assert ev.ablated_key(spec, subject, spec.checks[0], [3, 1, 1]) == keys[0]
    for key in keys:
        assert {k: key[k] for k in ident} == ident and key["what"] == "ablated"
    first = keys[0]
    assert first["units"] == [1, 3] and first["ablation"] == "zero"
    assert {k: first[k] for k in ("layer", "unit", "channel_dim")} == {
        "layer": "act", "unit": "channel", "channel_dim": 1}
    assert [k["ablation"] for k in keys] == ["zero", "mean", 0.5, 0.25, "mean", "resample",
                                             "resample", "zero", "zero"]
    assert keys[4]["reference"] == data_fingerprint(subject.references["ref"])
    assert "reference" not in keys[1] and "draws" not in keys[1]
    assert (keys[5]["draws"], keys[6]["draws"]) == (1, 2)
    assert keys[7]["layer"] == "conv" and keys[8]["units"] == [1]
    names = {repr(sorted(k.items())) for k in keys}
    assert len(names) == len(keys)  # no two passes share an entry


def test_in_memory_keys_tell_the_same_passes_apart(tmp_path: Path) -> None:
    engine, spec, subject = _bound(tmp_path, store=False)
    ev = engine.evals
    memos = [ev.ablated_memo(spec, subject, c, c.units) for c in spec.checks]
    assert len(set(memos)) == len(memos)
    first = spec.checks[0]
    assert ev.ablated_memo(spec, subject, first, [3, 1, 1]) == memos[0]
    for other in (Subject(model=Net().eval(), data=subject.data,
                          references=subject.references),
                  Subject(model=subject.model, data=_data(), references=subject.references)):
        assert ev.ablated_memo(spec, other, first, first.units) != memos[0]
    # another reference object changes the key of the check that declares it, only
    moved = Subject(model=subject.model, data=subject.data,
                    references={"ref": _data(seed=7, n=5)})
    assert ev.ablation_memo(spec, moved, spec.checks[4]) != \
        ev.ablation_memo(spec, subject, spec.checks[4])
    for plain in (0, 1, 2, 5):
        assert ev.ablation_memo(spec, moved, spec.checks[plain]) == \
            ev.ablation_memo(spec, subject, spec.checks[plain])


def test_a_constant_ablation_is_a_number_and_the_others_their_kind(tmp_path: Path) -> None:
    engine, spec, subject = _bound(tmp_path, store=False)
    args = [engine.evals.ablation_arg(spec, c) for c in spec.checks]
    assert args[:4] == ["zero", "mean", 0.5, 0.25] and isinstance(args[2], float)
    assert engine.evals.reference_data(spec, subject, spec.checks[4]) == (
        subject.references["ref"], True)
    assert engine.evals.reference_data(spec, subject, spec.checks[1]) == (subject.data, False)


def test_means_come_from_the_declared_reference_and_are_kept(tmp_path: Path) -> None:
    engine, spec, subject = _bound(tmp_path)
    ev = engine.evals
    own = ev.layer_means(spec, spec.checks[1], subject)["act"]
    ref = ev.layer_means(spec, spec.checks[4], subject)["act"]
    for data, got in ((subject.data, own), (subject.references["ref"], ref)):
        with torch.no_grad():
            acts = subject.model.act(subject.model.conv(data[0]))
        torch.testing.assert_close(got, acts.mean(dim=(0, 2, 3)))
    assert ev.layer_means(spec, spec.checks[1], subject)["act"] is own
    assert engine.store.stats["computed"] == 2  # type: ignore[attr-defined]
    again, spec2, subject2 = _bound(tmp_path)
    torch.testing.assert_close(again.evals.layer_means(spec2, spec2.checks[4],
                                                       subject2)["act"], ref)
    assert again.store.stats == {"hit": 1, "computed": 0,  # type: ignore[attr-defined]
                                 "recomputed": 0}


def test_results_survive_the_store_with_their_types(tmp_path: Path) -> None:
    from pytest_unitablate import evaluate

    model, data = Net().eval(), _data()
    result = evaluate(model, data)
    store = DiskStore(tmp_path)
    store.get_or_compute({"k": 1}, lambda: eval_arrays(result))
    back = eval_result(store.get_or_compute({"k": 1}, lambda: {}))
    assert back.num_classes == result.num_classes == 3 and isinstance(back.num_classes, int)
    assert back.fingerprint == result.fingerprint and isinstance(back.fingerprint, str)
    for name in ("labels", "predictions", "true_logprob"):
        assert np.array_equal(getattr(back, name), getattr(result, name))
    assert back.shares is None and "shares" not in eval_arrays(result)
    shared = eval_result({**eval_arrays(result), "shares": np.full(12, 0.5)})
    assert shared.shares is not None and shared.shares.tolist() == [0.5] * 12
    assert eval_arrays(shared)["shares"].tolist() == [0.5] * 12


def test_a_scan_row_is_that_ablated_pass(tmp_path: Path) -> None:
    from pytest_unitablate import evaluate, scan
    from pytest_unitablate.core.ablation import ablate

    model, data = Net().eval(), _data()
    scanned = scan(model, data, "act", units=[[0], [2, 3]], progress=False, method="naive")
    with ablate(model, {"act": [2, 3]}):
        direct = evaluate(model, data)
    row = row_result(scanned, 1)
    assert np.array_equal(row.predictions, direct.predictions)
    assert_f32_close(row.true_logprob, direct.true_logprob, terms=16, depth=3)
    assert row.fingerprint == direct.fingerprint and row.num_classes == 3
    assert np.array_equal(row.labels, direct.labels) and row.shares is None
    # resample draws: the row keeps each example's share of right draws
    shares = np.linspace(0, 1, scanned.predictions.size).reshape(scanned.predictions.shape)
    drawn = row_result(dataclasses.replace(scanned, shares=shares), 1)
    assert drawn.shares is not None and np.array_equal(drawn.shares, shares[1])


SWEEPS = """\
{ranking}checks:
  - layer: conv
    any_unit:
      expect: {{overall: {{min_drop: 1%}}}}
  - layer: act
    every_unit:
      expect: {{overall: {{max_drop: 100%}}}}
  - layer: fc
    top_units:
      k: 2
      class: 1
      expect: {{overall: {{max_drop: 100%}}}}
  - layer: conv
    units: [1]
    expect: {{overall: {{max_drop: 100%}}}}
"""


def _kept(engine: Engine, model: nn.Module, data: Any) -> list[str]:
    """The layers whose prefix outputs on ``data`` the engine keeps (for later sweeps)."""
    cpu = torch.device("cpu")
    return [layer for layer in ("conv", "act", "fc")
            if engine.evals.prefixes.get(model, data, layer, cpu, 256) is not None]


@pytest.mark.parametrize(("plain", "ranking", "evaluation_keeps", "ranking_keeps"), [
    (False, False, ["conv", "act", "fc"], []),
    (True, False, ["conv", "act", "fc"], []),
    (False, True, ["conv", "act"], ["fc"]),
])
def test_the_baseline_keeps_the_prefixes_of_the_layers_swept_after_it(
        tmp_path: Path, plain: bool, ranking: bool, evaluation_keeps: list[str],
        ranking_keeps: list[str]) -> None:
    """Layer-wide checks sweep their layer on the evaluation data, ``top_units`` ranks on
    the ranking data when there is one: each baseline keeps the prefixes of exactly the
    layers swept on its data (the named check's conv is swept anyway)."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + SWEEPS.format(
        ranking="ranking_data: ref\n" if ranking else ""))
    spec = load_spec(path)
    engine = Engine(EngineSettings(plain_passes=plain))
    subject = engine.bind(spec, mapping_lookup({"model": Net().eval(), "data": _data(),
                                                "ref": _data(seed=7, n=5)}))
    engine.evals.baseline(spec, subject)
    assert _kept(engine, subject.model, subject.data) == evaluation_keeps
    if ranking:
        engine.evals.baseline(spec, subject, ranking=True)
        assert _kept(engine, subject.model, subject.ranking) == ranking_keeps


def test_named_layers_are_kept_unless_plain_passes(tmp_path: Path) -> None:
    """Named checks are scanned too (their layer's prefix is worth keeping), except with
    plain passes, which run whole forwards."""
    body = textwrap.dedent("""\
        checks:
          - layer: act
            units: [1]
            expect: {overall: {max_drop: 100%}}
        """)
    for plain, want in ((False, ["act"]), (True, [])):
        path = tmp_path / "n.yaml"
        path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + body)
        spec = load_spec(path)
        engine = Engine(EngineSettings(plain_passes=plain))
        subject = engine.bind(spec, mapping_lookup({"model": Net().eval(), "data": _data()}))
        engine.evals.baseline(spec, subject)
        assert _kept(engine, subject.model, subject.data) == want


def test_provenance_hashes(tmp_path: Path) -> None:
    engine, spec, subject = _bound(tmp_path, store=False, head="reference: ref\n",
                                   body=CHECKS.replace("reference: ref", "reference: ref2"))
    hashes = engine.evals.hashes(spec, subject)
    refs = subject.references
    assert hashes == {
        "data_sha256": data_fingerprint(subject.data)[:16],
        "weights_sha256": weights_sha256(subject.model)[:16],
        "reference_sha256": f"ref={data_fingerprint(refs['ref'])[:16]}, "
                            f"ref2={data_fingerprint(refs['ref2'])[:16]}"}
    assert data_fingerprint(refs["ref"]) != data_fingerprint(refs["ref2"])
    engine, spec, subject = _bound(tmp_path, body=CHECKS.replace("    reference: ref\n", ""),
                                   store=False)
    assert "reference_sha256" not in engine.evals.hashes(spec, subject)
    # else what chose the weights (the plugin's weights variable), else nothing
    assert "checkpoint" not in engine.evals.hashes(spec, subject)
    engine.evals.settings = dataclasses.replace(
        engine.evals.settings, weights_source=lambda: "MODEL_WEIGHTS=ckpt/seed5.pt")
    assert engine.evals.hashes(spec, subject)["checkpoint"] == "MODEL_WEIGHTS=ckpt/seed5.pt"
    # the checkpoint a fixture names on its model (the weights' file, for the report) first
    subject.model.unitablate_checkpoint = "ckpt/seed3.pt"  # type: ignore[assignment]
    assert engine.evals.hashes(spec, subject)["checkpoint"] == "ckpt/seed3.pt"


def test_passes_are_seeded_only_with_a_seed(tmp_path: Path) -> None:
    for seed, same in ((5, True), (None, False)):
        engine, _, _ = _bound(tmp_path, store=False, seed=seed)
        torch.manual_seed(99)
        engine.evals.seeded()
        drawn = torch.rand(1).item()
        torch.manual_seed(5)
        assert (drawn == torch.rand(1).item()) is same


def _answering(model: Net, n: int = 40, seed: int = 3
               ) -> tuple[Net, tuple[torch.Tensor, torch.Tensor]]:
    """``model`` with a read-out centred on its features (so every class is answered and
    ablations change answers), and data labelled with its answers, every fifth wrong."""
    x, _ = _data(n=n)
    with torch.no_grad():
        features = model.act(model.conv(x)).mean(dim=(2, 3))
        w = 20 * torch.randn(3, features.shape[1],
                             generator=torch.Generator().manual_seed(seed))
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(-(w @ features.mean(0)))
        out = model(x)
        y = (out[0] if isinstance(out, tuple) else out).argmax(1)
    y[::5] = (y[::5] + 1) % 3
    return model, (x, y)


class PairNet(Net):
    """:class:`Net` returning ``(logits, features)``: the spec's ``output: 0`` matters."""

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        features = self.act(self.conv(x)).mean(dim=(2, 3))
        return self.fc(features), features


TOP = """\
  - layer: act
    top_units:
      k: 2
      class: 1
      expect: {overall: {max_drop: 100%}}
"""


def test_plain_passes_give_the_scans_numbers(tmp_path: Path) -> None:
    """Every ablation kind, through one full forward per check (``plain_passes``) and
    through the layer's scan: the same records, and the same again read from the store."""
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\noutput: 0\n" + CHECKS.replace(
        "units: [3, 1]", "units: [3, 1, 0]") + TOP)
    model, data = _answering(PairNet().eval())
    fixtures = {"model": model, "data": data, "ref": _data(seed=7, n=9)}
    runs = {plain: run_spec(path, fixtures=fixtures, plain_passes=plain,
                            cache_dir=tmp_path / f"c{plain}") for plain in (False, True)}
    fields = ("id", "outcome", "n", "baseline", "ablated", "drop", "ci_low", "ci_high",
              "p_value")
    scanned, plain = ([{f: r[f] for f in fields} for r in runs[k].records]
                      for k in (False, True))
    assert len(plain) == 10 and all(r["outcome"] == "passed" for r in plain)
    for a, b in zip(scanned, plain, strict=True):
        assert (a.pop("id"), a.pop("outcome")) == (b.pop("id"), b.pop("outcome"))
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (a, b)  # exact: float64 from counts
    assert len({r["drop"] for r in plain}) > 3  # the kinds measure different things
    again = run_spec(path, fixtures=fixtures, plain_passes=True, cache_dir=tmp_path / "cTrue")
    assert [{f: r[f] for f in fields} for r in again.records] == \
        [{f: r[f] for f in fields} for r in runs[True].records]


def test_one_engine_keeps_two_models_and_references_apart(tmp_path: Path) -> None:
    """One engine (one pytest process) evaluating two specs: another model (wider, other
    weights) and other reference data. Every record equals that of a fresh engine."""
    wide = Net().eval()
    torch.manual_seed(4)
    wide.conv, wide.fc = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6, 3)
    model, data = _answering(Net().eval(), n=30)
    wide, _ = _answering(wide, n=30, seed=4)
    first = tmp_path / "a.yaml"
    first.write_text("unitablate: 1\nmodel: model\ndata: data\n" + CHECKS)
    second = tmp_path / "b.yaml"
    second.write_text("unitablate: 1\nmodel: wide\ndata: data\nreference: ref2\n" + CHECKS.replace(
        "reference: ref", "reference: ref2").replace("units: [3, 1]", "units: [5, 1]"))
    third = tmp_path / "c.yaml"  # the first model, its values from other reference data
    third.write_text("unitablate: 1\nmodel: model\ndata: data\nreference: ref2\n" + CHECKS)
    objects = {"model": model, "wide": wide, "data": data,
               "ref": _data(seed=7, n=5), "ref2": _data(seed=8, n=6)}
    engine = Engine()
    specs = (first, second, third)
    shared = [evaluate_spec(path, mapping_lookup(objects), engine).records for path in specs]
    for path, records in zip(specs, shared, strict=True):
        assert records == run_spec(path, fixtures=objects).records
    drops = [[r["drop"] for r in records] for records in shared]
    assert drops[0] != drops[2] and len(set(drops[0])) > 3  # the references matter


def test_each_stored_entry_says_what_it_holds(tmp_path: Path) -> None:
    """A store entry keeps its key (to be read back, and looked at by whoever opens the
    cache): one per kind of evaluation a run makes, each named in ``what``. The unit a
    sweep tried first, ablated alone by a named check too, is two entries that only ``what``
    tells apart."""
    import json

    from pytest_unitablate.engine.store import _META

    body = CHECKS.split("  - layer: conv")[0] + (
        "  - layer: act\n    any_unit:\n      expect: {overall: {min_drop: 100%}}\n"
        + "".join(f"  - layer: act\n    units: [{unit}]\n"  # whichever unit it tries first
                  "    expect: {overall: {max_drop: 100%}}\n" for unit in range(4)))
    path = tmp_path / "w.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + body)
    objects = {"model": Net().eval(), "data": _data(), "ref": _data(seed=7, n=5)}
    run_spec(path, fixtures=objects, cache_dir=tmp_path / "cache")
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    keys = []
    for entry in entries:
        with np.load(entry) as npz:
            keys.append(json.loads(str(npz[_META])))
    assert {key["what"] for key in keys} == {"baseline", "means", "ablated", "order",
                                             "sweep"}
    sweep = next(key for key in keys if key["what"] == "sweep" and len(key["units"]) == 1)
    named = [key for key in keys if key["what"] == "ablated" and key["units"] == sweep["units"]
             and key["ablation"] == "zero"]
    assert named and {**named[0], "what": "sweep"} == sweep  # the same pass, two entries


def test_one_engine_checks_each_data_source_for_replay_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Binding a second spec to the same objects (one pytest process, two specs) does not
    check their data again; other data is checked."""
    from pytest_unitablate.engine import baselines

    checked: list[int] = []
    real = baselines.require_replayable

    def counting(data: Any) -> None:
        checked.append(id(data))
        real(data)

    monkeypatch.setattr(baselines, "require_replayable", counting)
    engine, spec, subject = _bound(tmp_path)
    assert sorted(checked) == sorted({id(subject.data), id(subject.references["ref"])})
    engine.bind(spec, mapping_lookup({"model": subject.model, "data": subject.data,
                                      "ref": subject.references["ref"]}))
    assert len(checked) == 2
    other = _data(seed=9)
    engine.bind(spec, mapping_lookup({"model": subject.model, "data": other,
                                      "ref": subject.references["ref"]}))
    assert checked[2:] == [id(other)]


def test_next_token_views_at_two_positions_are_two_identities(tmp_path: Path) -> None:
    """A language model read at position 0 and at its last position has the same weights
    and data: the identity names the position (its stored evaluations are apart); a plain
    model has none."""
    from pytest_unitablate.core.next_token import next_token

    class Embedded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.head = nn.Embedding(5, 8), nn.Linear(8, 5)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(input_ids))  # type: ignore[no-any-return]

    engine, spec, _ = _bound(tmp_path)
    lm = Embedded().eval()
    data = (torch.randint(0, 5, (6, 4)), torch.randint(0, 5, (6,)))
    views = next_token(lm, 0), next_token(lm, "last")  # kept, as the engine keeps them
    first, last = (engine.evals.identity(spec, view, data) for view in views)
    assert (first["position"], last["position"]) == (0, "last")
    assert first["weights"] == last["weights"] and first["data"] == last["data"]
    assert engine.evals.identity(spec, lm, data)["position"] is None
