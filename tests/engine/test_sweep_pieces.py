"""How xdist processes share a layer sweep, in one process: the pieces a sweep is cut
into, the piece each worker starts with, and that pieces computed by one worker are read
(not computed again) by another and give the very sweep a lone process makes. Also
``merge`` and ``Sweep.select``, which early-stopped sweeps are made of.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.refs import mapping_lookup
from pytest_unitablate.engine.settings import EngineSettings
from pytest_unitablate.engine.store import DiskStore
from pytest_unitablate.engine.sweeps import Sweep, Sweeps, merge
from pytest_unitablate.spec.loader import load_spec


def _sweeps(workers: int, stored: bool = True) -> Sweeps:
    evals = SimpleNamespace(settings=SimpleNamespace(worker=(0, workers)),
                            store=SimpleNamespace(enabled=stored))
    return Sweeps(evals)  # type: ignore[arg-type]


@pytest.mark.parametrize(("units", "workers", "stored", "sizes"), [
    (40, 1, True, [40]),  # alone: one piece
    (40, 2, False, [40]),  # nothing stored to share through
    (8, 4, True, [8]),  # too few units to cut
    (9, 2, True, [8, 1]),  # at least 8 units a piece
    (20, 2, True, [8, 8, 4]),
    (40, 2, True, [10, 10, 10, 10]),  # about two pieces per worker
    (100, 3, True, [17, 17, 17, 17, 17, 15]),
])
def test_a_sweep_is_cut_into_pieces_of_at_least_eight_about_two_per_worker(
        units: int, workers: int, stored: bool, sizes: list[int]) -> None:
    pieces = _sweeps(workers, stored)._pieces(tuple(range(units)))
    assert [len(p) for p in pieces] == sizes
    assert [u for p in pieces for u in p] == list(range(units))


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 20)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g)
    return x, torch.randint(0, 3, (30,), generator=g)


SPEC = textwrap.dedent("""\
    unitablate: 1
    model: model
    data: data
    checks:
      - layer: act
        every_unit:
          expect: {overall: {max_drop: 100%}}
    """)


def _engine(tmp_path: Path, worker: tuple[int, int], model: nn.Module,
            data: Any) -> tuple[Engine, Any, Any, list[tuple[int, ...]]]:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    engine = Engine(EngineSettings(worker=worker), DiskStore(tmp_path / "cache"))
    subject = engine.bind(spec, mapping_lookup({"model": model, "data": data}))
    tried: list[tuple[int, ...]] = []
    store = engine.evals.store
    plain = store.try_get_or_compute

    def recording(key: Any, compute: Any) -> Any:
        tried.append(tuple(key["units"]))
        return plain(key, compute)

    store.try_get_or_compute = recording  # type: ignore[method-assign]
    return engine, spec, subject, tried


def test_workers_start_with_different_pieces_and_share_what_they_computed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine of each piece must not depend on timings: on a loaded machine a piece can
    # measure the prefix engine slower than the naive loop and switch
    from pytest_unitablate.core.scan import suffix

    monkeypatch.setattr(suffix, "slower_than_naive", lambda *args: False)
    model, data = Wide().eval(), _data()
    lone = Engine(EngineSettings())
    spec = load_spec(_spec_file(tmp_path))
    lone_subject = lone.bind(spec, mapping_lookup({"model": model, "data": data}))
    expected = lone.sweeps.sweep(spec, lone_subject, spec.checks[0])

    second, spec2, subject2, tried = _engine(tmp_path, (1, 2), model, data)
    sweep = second.sweeps.sweep(spec2, subject2, spec2.checks[0])
    pieces = [tuple(range(0, 8)), tuple(range(8, 16)), tuple(range(16, 20))]
    assert tried == [pieces[1], pieces[2], pieces[0]]  # worker 1 of 2 starts at piece 1
    assert second.evals.store.stats["hit"] == 0
    assert sweep.units == tuple(range(20))
    assert np.array_equal(sweep.predictions, expected.predictions)
    assert np.array_equal(sweep.logprobs, expected.logprobs)
    assert np.array_equal(sweep.labels, expected.labels)
    assert sweep.method == expected.method and sweep.reason == expected.reason

    first, spec1, subject1, tried = _engine(tmp_path, (0, 2), model, data)
    again = first.sweeps.sweep(spec1, subject1, spec1.checks[0])
    assert tried == pieces  # worker 0 starts at piece 0, and reads every piece
    assert first.evals.store.stats["hit"] >= 3
    assert np.array_equal(again.predictions, expected.predictions)


def _spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "lone.yaml"
    path.write_text(SPEC)
    return path


def _sweep(units: tuple[int, ...], method: str, shares: bool = False, reason: str = "",
           plan: str = "") -> Sweep:
    n = len(units)
    preds = np.array([[u % 3, (u + 1) % 3] for u in units]).reshape(n, 2)
    return Sweep(units=units, predictions=preds, labels=np.array([0, 1]), baseline="base",
                 method=method, reason=reason, plan=plan,
                 logprobs=-np.arange(2 * n, dtype=np.float32).reshape(n, 2),
                 shares=np.full((n, 2), 0.5) if shares else None)


def test_merged_parts_keep_their_order_and_name_every_engine() -> None:
    a, b = _sweep((4, 2), "prefix", reason="r1", plan="p1"), _sweep((7,), "closed_form",
                                                                      reason="r2", plan="p2")
    whole = merge([a, b])
    assert whole.units == (4, 2, 7)
    assert np.array_equal(whole.predictions, np.concatenate([a.predictions, b.predictions]))
    assert np.array_equal(whole.logprobs, np.concatenate([a.logprobs, b.logprobs]))
    assert (whole.method, whole.reason, whole.plan, whole.baseline) == \
        ("closed_form+prefix", "r2", "p2", "base")
    assert whole.shares is None
    shared = merge([_sweep((1,), "naive", shares=True), _sweep((3, 5), "naive", shares=True)])
    assert shared.method == "naive" and shared.shares.shape == (3, 2)
    assert merge([a]) is a


def test_a_selection_keeps_each_units_row_and_the_sweeps_facts() -> None:
    whole = _sweep((0, 1, 2, 3), "prefix", shares=True, reason="why", plan="how")
    part = whole.select([3, 1])
    assert part.units == (3, 1)
    assert np.array_equal(part.predictions, whole.predictions[[3, 1]])
    assert np.array_equal(part.logprobs, whole.logprobs[[3, 1]])
    assert np.array_equal(part.shares, whole.shares[[3, 1]])
    assert (part.baseline, part.method, part.reason, part.plan) == \
        ("base", "prefix", "why", "how")
    assert np.array_equal(part.correct(0), whole.shares[3])
    plain = _sweep((0, 1), "naive").select([1])
    assert plain.shares is None
    assert np.array_equal(plain.correct(0), plain.predictions[0] == plain.labels)


def _reference() -> tuple[torch.Tensor, torch.Tensor]:
    """Data whose unit means differ from the evaluation data's."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(40, 6, generator=g) * 3 + 2, torch.randint(0, 3, (40,), generator=g)


def _damaging_first(damage: Any) -> tuple[int, ...]:
    """Units by estimated damage, most first, ties by index (the order's own rule)."""
    return tuple(sorted(range(len(damage)), key=lambda u: (-damage[u], u)))


def _ordered(tmp_path: Path, ablation: str) -> tuple[tuple[int, ...], str]:
    path = tmp_path / f"{ablation}.yaml"
    path.write_text(textwrap.dedent(f"""\
        unitablate: 1
        model: model
        data: data
        reference: ref
        checks:
          - layer: act
            ablation: {ablation}
            any_unit:
              expect: {{2: {{min_drop: 50%}}}}
        """))
    spec = load_spec(path)
    engine = Engine(EngineSettings())
    subject = engine.bind(spec, mapping_lookup({"model": Wide().eval(), "data": _data(),
                                                "ref": _reference()}))
    return engine.sweeps.unit_order(spec, subject, spec.checks[0], target=2,
                                    damaging_first=True)


def test_mean_and_resample_orders_estimate_with_the_reference_datas_means(
        tmp_path: Path) -> None:
    """The first-order estimate of mean ablation replaces each unit by its mean over the
    reference data; resample's expected replacement is that mean, so both order alike.
    The order is the estimate's, checked against the core function given those means."""
    from pytest_unitablate.core.ablation import channel_means
    from pytest_unitablate.core.unit_order import estimated_damage

    model, data = Wide().eval(), _data()
    means = channel_means(model, [_reference()], ["act"])
    expected = _damaging_first(estimated_damage(model, data, "act", target=2,
                                                ablation="mean", means=means))
    assert expected != tuple(range(20))  # not the index order a refused estimate gives
    for ablation in ("mean", "resample"):
        order, how = _ordered(tmp_path, ablation)
        assert how == "a first-order estimate of each unit's damage", (ablation, how)
        assert order == expected, ablation


def test_progress_series_name_what_they_count(tmp_path: Path) -> None:
    """run_spec's progress factory: one series for the layer's named checks (unit 0
    among them: every named unit set rides the one scan), one per layer-wide sweep, each
    with its total of ablated examples; every series reaches its total."""
    from pytest_unitablate import run_spec

    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        checks:
          - layer: act
            units: [2, 5]
            expect: {overall: {max_drop: 100%}}
          - layer: act
            units: [0]
            expect: {overall: {max_drop: 100%}}
          - layer: act
            every_unit:
              expect: {overall: {max_drop: 100%}}
          - layer: act
            units: [20]
            expect: {overall: {max_drop: 100%}}
        """))
    series: list[tuple[str, int | None]] = []
    done: dict[str, int] = {}

    def factory(label: str, total: int | None) -> Any:
        series.append((label, total))

        def line(count: int, known: int | None) -> None:
            done[label] = max(done.get(label, 0), count)
        return line

    run = run_spec(path, fixtures={"model": Wide().eval(), "data": _data()},
                   progress=factory, full_sweeps=True)
    # the unit out of range is its own item's problem, not the other named checks'
    assert [(r["outcome"], r["problem"]) for r in run.records] == [
        ("passed", None), ("passed", None), ("passed", None), ("failed", "spec")]
    assert series == [("p.yaml act (2 named check(s))", 2 * 30),
                      (f"{path}:11 act", 20 * 30)]
    assert done == {label: total for label, total in series}


class TwoOutputs(nn.Module):
    """A dict output: the logits under ``scores`` (no name the core would guess),
    something as wide first."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Wide()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"aux": x[:, :3] * 2, "scores": self.inner(x)}  # both 3 wide


def test_the_unit_order_estimates_on_the_spec_s_output(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        output: scores
        checks:
          - layer: inner.act
            any_unit:
              expect: {2: {min_drop: 50%}}
        """))
    spec = load_spec(path)
    engine = Engine(EngineSettings())
    model = TwoOutputs().eval()
    subject = engine.bind(spec, mapping_lookup({"model": model, "data": _data()}))
    order, how = engine.sweeps.unit_order(spec, subject, spec.checks[0], target=2,
                                          damaging_first=True)
    assert how == "a first-order estimate of each unit's damage", how
    from pytest_unitablate.core.unit_order import estimated_damage

    assert order == _damaging_first(estimated_damage(model.inner, _data(), "act", target=2))


def test_a_sweep_of_several_resample_draws_keeps_each_examples_share(tmp_path: Path) -> None:
    """With ``{resample: {draws: 3}}`` an example is right in 0, 1, 2 or 3 draws: the
    sweep keeps that share per unit and example (the core's ``shares``), and a unit's
    correctness is the share, not the first draw's prediction."""
    from pytest_unitablate.core.scan import scan

    path = tmp_path / "r.yaml"
    path.write_text(SPEC.replace("  - layer: act\n",
                                 "  - layer: act\n    ablation: {resample: {draws: 3}}\n"))
    spec = load_spec(path)
    engine = Engine(EngineSettings(seed=0))
    model, data = Wide().eval(), _data()
    subject = engine.bind(spec, mapping_lookup({"model": model, "data": data}))
    check = spec.checks[0]
    sweep = engine.sweeps.sweep(spec, subject, check)
    engine.evals.seeded()
    core = scan(model, data, "act", units=list(range(20)),
                **engine.evals.ablation_values(spec, subject, check))
    assert sweep.shares is not None and core.shares is not None
    assert np.array_equal(sweep.shares, core.shares)
    assert {0.0, 1.0} < set(np.round(sweep.shares.ravel() * 3) / 3)  # thirds are there
    row = next(r for r in range(20) if not np.array_equal(
        sweep.correct(r), sweep.predictions[r] == sweep.labels))
    assert np.array_equal(sweep.correct(row), core.shares[row])


class Frozen(Wide):
    """The hidden units detached before a tanh read-out: no gradient reaches them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.act(self.fc1(x)).detach()))  # type: ignore[no-any-return]


def test_a_model_without_gradients_is_ordered_by_unit_index_and_says_why(
        tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    engine = Engine(EngineSettings())
    subject = engine.bind(spec, mapping_lookup({"model": Frozen().eval(), "data": _data()}))
    for damaging_first in (True, False):
        order, how = engine.sweeps.unit_order(spec, subject, spec.checks[0], target=2,
                                              damaging_first=damaging_first)
        assert order == tuple(range(20))
        assert how.startswith("unit index (no gradient estimate: RuntimeError: "), how


class Conv(nn.Module):
    """Ten channels, then ReLU, average pooling and a linear head: the closed form's
    shape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 10, 3)
        self.rest = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(10, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.conv(x))  # type: ignore[no-any-return]


def _closed_form_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int
                       ) -> tuple[Sweep, list[tuple[int, ...]]]:
    """``in_order`` over the ten channels of ``conv``, last unit first, ``first`` units
    in its first chunk and nothing decided; with the units of every scan it ran."""
    from pytest_unitablate.engine import sweeps

    path = tmp_path / "c.yaml"
    path.write_text(SPEC.replace("layer: act", "layer: conv"))
    spec = load_spec(path)
    engine = Engine(EngineSettings())
    g = torch.Generator().manual_seed(2)
    data = (torch.randn(30, 1, 5, 5, generator=g), torch.randint(0, 3, (30,), generator=g))
    subject = engine.bind(spec, mapping_lookup({"model": Conv().eval(), "data": data}))
    scanned: list[tuple[int, ...]] = []
    real = sweeps.scan

    def counting(*args: Any, **kwargs: Any) -> Any:
        scanned.append(tuple(kwargs["units"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "scan", counting)
    result = engine.sweeps.in_order(spec, subject, spec.checks[0], tuple(range(9, -1, -1)),
                                    decided=lambda sweep: False, first=first)
    return result, scanned


def test_a_closed_form_chunk_short_of_the_layer_sweeps_the_whole_layer_in_one_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The closed form costs one pass for any number of units: after a first chunk that
    does not decide, the rest is read out of one sweep of the whole layer; a first chunk
    that already holds every unit is the only scan."""
    short, scanned = _closed_form_scans(tmp_path, monkeypatch, first=3)
    assert short.method == "closed_form", short.reason
    assert scanned == [(9, 8, 7), tuple(range(10))]
    assert short.units == tuple(range(9, -1, -1))
    whole, scanned = _closed_form_scans(tmp_path, monkeypatch, first=10)
    assert scanned == [tuple(range(9, -1, -1))]
    assert np.array_equal(whole.predictions, short.predictions)
