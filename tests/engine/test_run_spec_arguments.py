"""``run_spec``'s keyword arguments, each shown to reach the engine: the memory budget
(and its refusals), the device refusals, ``record_force`` in CI, ``full_sweeps``,
``full_trace`` on an unexpected error, and the report's run fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import tiny_source

from pytest_unitablate import run_spec
from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.run import evaluate_spec
from pytest_unitablate.errors import SpecError
from pytest_unitablate.plugin.record_mode import CI_VARIABLES
from pytest_unitablate.spec.loader import load_spec


@pytest.fixture
def spec(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in CI_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(tinymodel=tiny_source.TINY)
    pytester.syspathinsert()
    path = pytester.path / "spec.yaml"
    path.write_text(tiny_source.HEAD + tiny_source.ALL_ENGINES)
    return path


def _outcomes(run: object) -> dict[str, str]:
    return {r["id"]: r["outcome"] for r in run.records}  # type: ignore[attr-defined]


def test_a_memory_budget_is_a_positive_size(spec: Path) -> None:
    plain = _outcomes(run_spec(spec))
    assert _outcomes(run_spec(spec, memory_budget=1)) == plain  # one example per pass
    assert _outcomes(run_spec(spec, memory_budget="512MiB")) == plain
    for bad in (0, -5, True, 1.5):
        with pytest.raises(ValueError) as raised:
            run_spec(spec, memory_budget=bad)  # type: ignore[arg-type]
        assert str(raised.value) == (
            "run_spec(memory_budget=...) takes a positive number of bytes or a size such as "
            f"'512MiB', got {bad!r}")


def _spy(real: Callable[..., object], calls: list[dict[str, object]]
         ) -> Callable[..., object]:
    def spy(*args: object, **kwargs: object) -> object:
        calls.append({k: kwargs[k] for k in ("memory_budget", "device", "progress")})
        return real(*args, **kwargs)
    return spy


def test_the_budget_and_device_reach_every_scan(spec: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The scans of named checks and of layer sweeps get the run's memory budget and
    device (the unit order's gradient estimate the device), and no progress bar without
    a progress factory (``False``: not even on a terminal)."""
    from pytest_unitablate.engine import named, sweeps

    seen: dict[str, list[dict[str, object]]] = {"named": [], "sweeps": []}
    monkeypatch.setattr(named, "scan", _spy(named.scan, seen["named"]))
    monkeypatch.setattr(sweeps, "scan", _spy(sweeps.scan, seen["sweeps"]))
    estimates: list[object] = []  # the unit order's gradient estimate runs on it too
    real_estimate = sweeps.estimated_damage

    def estimate(*args: object, **kwargs: object) -> object:
        estimates.append(kwargs["device"])
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(sweeps, "estimated_damage", estimate)
    run_spec(spec, memory_budget="1MiB", device="cpu")
    expected = {"memory_budget": 1 << 20, "device": "cpu", "progress": False}
    for calls in seen.values():
        assert calls and all(kwargs == expected for kwargs in calls), seen
    assert estimates and set(estimates) == {"cpu"}, estimates


def test_a_device_this_torch_cannot_use_is_refused_at_once(spec: Path) -> None:
    import torch

    for device, backend in (("mps", getattr(torch.backends, "mps", None)),
                            ("cuda:0", torch.cuda)):
        if backend is not None and backend.is_available():
            continue  # this machine has it: nothing to refuse
        with pytest.raises(ValueError, match=rf"^run_spec\(device='{device}'\): "
                                             rf"'{device}': .* is not available to this "):
            run_spec(spec, device=device)


def test_record_force_lets_record_mode_run_in_ci(spec: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ValueError, match=r"^run_spec\(record_mode='new'\): "):
        run_spec(spec, record_mode="new")
    assert run_spec(spec, record_mode="new", record_force=True).ok


def test_full_sweeps_evaluates_every_unit(spec: Path) -> None:
    def evaluated(run: object) -> int:
        item = next(i for i in run.items  # type: ignore[attr-defined]
                    if i.id == "hidden-any-two-min_drop")
        return int(item.record["units_evaluated"])

    assert evaluated(run_spec(spec)) == 1  # unit 2 decides at once
    assert evaluated(run_spec(spec, full_sweeps=True)) == 4


def test_an_unexpected_error_is_a_located_failure_unless_full_trace(
        spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an internal slip")

    monkeypatch.setattr(Engine, "run_item", boom)
    run = run_spec(spec)
    item = run.items[0]
    assert (item.id, item.outcome) == ("hidden-u1-one-min_drop", "failed")
    first = (f"{spec}:9: unexpected error while running hidden-u1-one-min_drop: "
             f"RuntimeError: an internal slip")
    assert item.message == f"{first}\n  (pass full_trace=True for the traceback)"
    assert item.record["reason"] == first and item.record["layer"] == "hidden"
    with pytest.raises(RuntimeError, match="an internal slip"):
        run_spec(spec, full_trace=True)


def test_the_run_fields_name_this_run(spec: Path) -> None:
    import torch

    from pytest_unitablate.version import __version__

    assert run_spec(spec).environment == {
        "pytest_unitablate_version": __version__, "torch_version": str(torch.__version__),
        "device": "cpu", "dtype": "float32"}


def test_a_spec_object_without_checks_yields_no_items(spec: Path) -> None:
    empty = dataclasses.replace(load_spec(spec), checks=())
    with pytest.raises(SpecError) as raised:
        evaluate_spec(empty, None, Engine())
    assert [(p.path, p.line, p.message) for p in raised.value.problems] == [
        (str(spec), 1, "the spec yields no test items")]


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 * 1024**2), ("2 GiB", 2 * 1024**3), (" 1.5GB ", 1_500_000_000),
    ("1000", 1000), ("4kb", 4000), ("1KiB", 1024)])
def test_sizes_parse_in_their_units(text: str, size: int) -> None:
    from pytest_unitablate.engine.settings import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "message"), [
    ("lots", "must be a size such as 512MiB or 4GiB, got 'lots'"),
    ("5 parsecs", "must be a size such as 512MiB or 4GiB, got '5 parsecs'"),
    ("0MiB", "must be positive, got '0MiB'"),
    ("0.1", "must be positive, got '0.1'"),
])
def test_a_size_that_is_none_says_what_one_looks_like(text: str, message: str) -> None:
    from pytest_unitablate.engine.settings import parse_size

    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value) == message


def test_a_model_without_parameters_is_judged_in_the_default_dtype(tmp_path: Path) -> None:
    """A model with no parameters (here a ReLU over three inputs read as logits) has no
    weights to read a dtype from: the run says torch's default, float32."""
    import torch
    from torch import nn

    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nchecks:\n  - layer: '0'\n"
                    "    units: [2]\n    expect: {overall: {max_drop: 100%}}\n")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g)
    run = run_spec(path, fixtures={"model": nn.Sequential(nn.ReLU()).eval(),
                                   "data": (x, x.argmax(1))}, cache_dir=tmp_path / "c")
    assert run.environment["dtype"] == "float32"
    assert [item.outcome for item in run.items] == ["passed"]
