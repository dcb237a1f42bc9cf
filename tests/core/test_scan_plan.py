"""How the prefix engine cuts its work (units and examples per suffix pass), measured
memory, the measured switch to the naive loop, progress, and the entry convolutions run
once per batch."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import ablate, evaluate, scan
from pytest_unitablate.core.scan import suffix as scan_fx
from pytest_unitablate.core.scan.memory import graph_peak_bytes
from pytest_unitablate.core.scan.plan import Calibration, limits, slower_than_naive


class Wide(nn.Module):
    """A layer (``mid``) whose suffix is wide enough that its memory is easy to see; the
    suffix starts with a convolution, so the entry-convolution path runs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.mid = nn.ReLU()
        self.up = nn.Conv2d(8, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.up(self.mid(self.stem(x))))
        return self.fc(torch.flatten(self.pool(h * h), 1))


def _data(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 5, (n,), generator=g)
    return [(x[i:i + 20], y[i:i + 20]) for i in range(0, n, 20)]


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Independent of the code under test: peak bytes of live tensor storages created by
    torch operators while ``fn`` runs (a dispatch mode sees every operator's outputs)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
    state = {"now": 0, "peak": 0}

    def release(key: int) -> None:
        live[key][1] -= 1
        if live[key][1] == 0:
            state["now"] -= live.pop(key)[0]

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if key in inputs or size == 0:
                    continue
                if key not in live:
                    live[key] = [size, 0]
                    state["now"] += size
                    state["peak"] = max(state["peak"], state["now"])
                live[key][1] += 1
                weakref.finalize(t, release, key)
            return out

    with Mode():
        fn()
    return state["peak"]


def _naive(model: nn.Module, data: Any, layer: str, units: Any) -> np.ndarray:
    rows = []
    for unit in units:
        with ablate(model, {layer: [unit]}):
            rows.append(evaluate(model, data).predictions)
    return np.stack(rows)


@given(batch=st.integers(1, 512), n_units=st.integers(1, 2048),
       row_bytes=st.integers(1, 10**7), budget=st.integers(1, 10**10))
def test_limits_stay_within_the_budget(batch: int, n_units: int, row_bytes: int,
                                       budget: int) -> None:
    examples, units = limits(batch, n_units, row_bytes, budget)
    assert 1 <= examples <= batch and 1 <= units <= n_units
    if row_bytes <= budget:  # anything fits one example and one unit, or nothing does
        assert examples * units * row_bytes <= budget
    if examples < batch:  # the batch is split only when one unit does not fit it
        assert units == 1 and (examples + 1) * row_bytes > budget


@given(st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=12), st.integers(1, 64))
def test_calibration_keeps_the_fastest_and_stops(times: list[float], most: int) -> None:
    plan = Calibration(most)
    tried = []
    for seconds in times:
        if plan.done:
            break
        tried.append(plan.next)
        plan.record(plan.next, seconds)
    assert tried == [2 ** i for i in range(len(tried))]  # 1, 2, 4, ...
    assert all(k <= max(1, most) for k in tried)
    assert plan.chosen in tried
    assert plan.per_unit[plan.chosen] == min(plan.per_unit.values())
    if plan.done and len(tried) >= 2 and tried[-1] * 2 <= most:  # stopped: no 10% gain
        assert plan.per_unit[tried[-1]] >= 0.9 * min(plan.per_unit[k] for k in tried[:-1])


def test_slower_than_naive_counts_the_prefix_pass_once() -> None:
    assert not slower_than_naive(prefix=0.5, per_unit=0.5, whole=1.0, n_units=1)
    assert slower_than_naive(prefix=0.6, per_unit=0.5, whole=1.0, n_units=1)
    assert not slower_than_naive(prefix=0.6, per_unit=0.5, whole=1.0, n_units=2)
    # a whole forward of 2 s per unit: 1 + 2 * 1.5 = 4 s is not more than 2 * 2 s
    assert not slower_than_naive(prefix=1.0, per_unit=1.5, whole=2.0, n_units=2)
    assert slower_than_naive(prefix=1.1, per_unit=1.5, whole=2.0, n_units=2)


def test_a_plan_describes_itself_in_one_line() -> None:
    from pytest_unitablate.core.scan.plan import Plan

    plan = Plan(units=4, examples=64, row_bytes=3 * 1024, budget=2 * 1024**3,
                how="fastest of 1, 2, 4")
    assert plan.describe() == ("4 unit(s) x 64 example(s) per suffix pass (fastest of 1, 2, "
                               "4; one unit on one example needs 3.0 KiB, budget 2.0 GiB)")


def test_graph_peak_bytes_agrees_with_what_torch_allocates() -> None:
    """The graph replay against a dispatch-mode count of real allocations, on a residual
    network with views, in-place ops and branches (one example, as scan measures it)."""
    import torchvision
    from torch import fx

    torch.manual_seed(0)
    for model in (torchvision.models.resnet18(num_classes=10).eval(), Wide().eval()):
        traced = fx.symbolic_trace(model)
        x = torch.randn(1, *((3, 64, 64) if model.__class__.__name__ == "ResNet"
                             else (1, 12, 12)))
        with torch.no_grad():
            real = peak_bytes(lambda m=traced, x=x: m(x)) + x.nbytes  # + the live input
            ours = graph_peak_bytes(traced, x)
        assert 0.9 * real <= ours <= 1.6 * real, (ours, real)


def test_a_small_budget_splits_the_batch_and_bounds_memory() -> None:
    torch.manual_seed(0)
    model = Wide().eval()
    data = _data()
    big = scan(model, data, "mid", chunk_size=8)
    small = scan(model, data, "mid", chunk_size=8, memory_budget=200_000)
    assert big.method == small.method == "prefix"
    assert big.plan.startswith("8 unit(s) x 20 example(s)"), big.plan
    assert small.plan.startswith("1 unit(s) x "), small.plan
    assert "capped by the budget" in small.plan
    examples = int(small.plan.split(" x ")[1].split(" ")[0])
    assert examples < 20
    expected = _naive(model, data, "mid", range(8))
    assert np.array_equal(big.predictions, expected)
    assert np.array_equal(small.predictions, expected)
    with torch.no_grad():
        plain = peak_bytes(lambda: evaluate(model, data))
        measured = peak_bytes(lambda: scan(model, data, "mid", chunk_size=8,
                                           memory_budget=200_000, progress=False))
        unbounded = peak_bytes(lambda: scan(model, data, "mid", chunk_size=8,
                                            progress=False))
    assert measured <= 3 * plain + 200_000 < unbounded


def test_an_engine_measured_slower_than_the_naive_loop_is_replaced_and_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Wide().eval()
    data = _data()
    monkeypatch.setattr(scan_fx, "slower_than_naive", lambda *a: True)
    result = scan(model, data, "mid")
    assert result.method == "naive"
    assert "measured on the first batch, the split network costs" in result.reason
    assert np.array_equal(result.predictions, _naive(model, data, "mid", range(8)))
    assert scan(model, data, "mid", chunk_size=4).method == "prefix"  # a fixed size: no switch
    assert scan(model, data, "mid", method="prefix").method == "prefix"


def test_progress_reports_every_unit_and_example() -> None:
    torch.manual_seed(0)
    model = Wide().eval()
    x = torch.cat([b[0] for b in _data()])
    y = torch.cat([b[1] for b in _data()])
    for layer, method in [("mid", "prefix"), ("mid", "naive"), ("up", "prefix")]:
        seen: list[tuple[int, int | None]] = []
        scan(model, (x, y), layer, method=method, batch_size=16,
             progress=lambda done, total, seen=seen: seen.append((done, total)))
        units = 8 if layer == "mid" else 64
        assert seen[-1] == (units * 40, units * 40), (layer, method)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_progress_bar_counts_whole_units(monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    bars: list[Any] = []

    class Bar:
        def __init__(self, **kwargs: Any) -> None:
            self.total, self.n, self.steps = kwargs["total"], 0, []
            bars.append(self)

        def update(self, k: Any) -> None:
            self.steps.append(k)
            self.n += k

        def reset(self) -> None:
            self.n = 0

        def close(self) -> None:
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    torch.manual_seed(0)
    model = Wide().eval()
    x = torch.cat([b[0] for b in _data()])
    y = torch.cat([b[1] for b in _data()])
    scan(model, (x, y), "mid", batch_size=16, chunk_size=3, progress=True)  # 3 batches
    (bar,) = bars
    assert bar.total == 8 and bar.n == 8
    assert all(isinstance(k, int) and k > 0 for k in bar.steps), bar.steps


@pytest.mark.parametrize("geometry", [
    {"kernel_size": 3, "padding": 1},  # Wide's own
    {"kernel_size": 3, "dilation": 2, "padding": 2},
    {"kernel_size": (3, 1), "stride": 2},
    {"kernel_size": 2, "stride": (1, 2), "padding": (1, 0)},
])
def test_entry_convolutions_run_once_per_batch_whatever_the_units(
        geometry: dict[str, Any]) -> None:
    """The entry convolution runs as many times for 8 units as for 2 (its per-unit
    shortcut, in the prefix engine), with exact results, whatever its dilation, stride,
    padding and kernel shape."""
    torch.manual_seed(0)
    model = Wide().eval()
    model.up = nn.Conv2d(8, 64, **geometry)
    data = _data()
    calls = [0]
    model.up.register_forward_hook(lambda m, a, o: calls.__setitem__(0, calls[0] + 1))
    counts = []
    for n in (2, 8):
        calls[0] = 0
        result = scan(model, data, "mid", units=list(range(n)), chunk_size=1)
        counts.append(calls[0])
        assert result.method == "prefix", result.reason
        assert np.array_equal(result.predictions, _naive(model, data, "mid", range(n)))
    assert counts[0] == counts[1], counts  # the shortcut: not once per unit


def test_no_units_gives_the_baseline_and_no_rows() -> None:
    torch.manual_seed(0)
    model = Wide().eval()
    data = _data()
    result = scan(model, data, "mid", units=[])
    assert result.predictions.shape == (0, 40) and result.units == ()
    assert result.logprobs.shape == (0, 40) and result.logprobs.dtype == np.float32
    assert (result.method, result.reason) == ("naive", "no units to scan")
    assert result.frame.empty  # a frame with its columns and no rows
    assert result.baseline.predictions.tolist() == evaluate(model, data).predictions.tolist()


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024**2, "5.0 MiB"), (2 * 1024**3, "2.0 GiB"), (3 * 1024**4, "3072.0 GiB"),
    (-2048, "-2.0 KiB"),
])
def test_sizes_read_in_binary_units(n: int, text: str) -> None:
    from pytest_unitablate.core.scan.memory import format_bytes

    assert format_bytes(n) == text


class _Views(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x * 2  # a new 4,000 bytes
        b = a.view(10, 100)  # a view of a: nothing new
        c = b.relu_()  # in place: nothing new
        return c + 1  # a new 4,000 bytes; a dies after it


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, _ = torch.max(x.view(10, 100), dim=1)  # a tuple: 40 + 80 new bytes
        return values * 1


def test_graph_peak_bytes_counts_views_and_in_place_results_once() -> None:
    """Exact bytes on a (1, 1000) float32 input (4,000 bytes, alive while the graph
    runs): views and in-place results share their input's storage; a tuple's tensors
    count."""
    from torch import fx

    x = torch.randn(1, 1000)
    # x + a, then (x freed) a + the result: 8,000 at most
    assert graph_peak_bytes(fx.symbolic_trace(_Views()), x) == 8000
    # x + max's values and indices
    assert graph_peak_bytes(fx.symbolic_trace(_TupleOut()), x) == 4000 + 40 + 80


def _how(plan: str) -> str:
    """What chose a plan: the text between its parenthesis and "; one unit"."""
    return plan.split(" per suffix pass (", 1)[1].split("; one unit on one example", 1)[0]


def test_a_chunk_size_is_said_and_said_capped_only_above_what_the_budget_allows() -> None:
    model, data = Wide().eval(), _data()
    capped = scan(model, data, "mid", chunk_size=1000, memory_budget=8_000_000,
                  progress=False, method="prefix")
    assert _how(capped.plan) == "chunk_size=1000, capped by the budget"
    most = int(capped.plan.split(" unit(s)", 1)[0])
    assert 1 < most < 8
    exact = scan(model, data, "mid", chunk_size=most, memory_budget=8_000_000, progress=False,
                 method="prefix")
    assert _how(exact.plan) == f"chunk_size={most}"
    assert exact.plan.startswith(f"{most} unit(s) x ")
    roomy = scan(model, data, "mid", chunk_size=3, progress=False, method="prefix")
    assert _how(roomy.plan) == "chunk_size=3"
    expected = _naive(model, data, "mid", range(8))
    for result in (capped, exact, roomy):
        assert np.array_equal(result.predictions, expected)


class BatchReshape(nn.Module):
    """The batch size is read before the layer and used after it (a reshape to it, as
    torchvision's ViT does): copies cannot be stacked, one unit per whole-batch pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.fc2(self.act(self.fc1(x))).reshape(n, 3)


def test_a_suffix_that_uses_the_batch_size_takes_one_unit_per_pass() -> None:
    model = BatchReshape().eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    result = scan(model, (x, y), "act", progress=False, method="prefix")
    assert result.method == "prefix"
    assert _how(result.plan) == "the network after the layer uses the batch size"
    assert result.plan.startswith("1 unit(s) x 24 example(s) per suffix pass")
    assert np.array_equal(result.predictions, _naive(model, (x, y), "act", range(8)))


def test_unit_sets_skip_the_entry_convolution_shortcut_and_stay_exact() -> None:
    """The entry convolutions' one-channel shortcut serves one unit per copy: rows that
    ablate several units together go through the suffix whole, and equal the naive loop."""
    model, data = Wide().eval(), _data()
    rows = [(0, 1), 2, (3, 4, 7)]
    result = scan(model, data, "mid", units=rows, method="prefix", progress=False)
    expected = []
    for row in rows:
        with ablate(model, {"mid": list(row) if isinstance(row, tuple) else [row]}):
            expected.append(evaluate(model, data).predictions)
    assert np.array_equal(result.predictions, np.stack(expected))


@pytest.mark.parametrize(("units", "n"), [([3], 40), ([1, 2], 20), (list(range(8)), 40)])
def test_a_plan_without_a_chunk_size_says_it_was_measured(units: list[int], n: int) -> None:
    """Also when the scan had too little work to finish measuring: two units and one
    batch measure one unit per pass, then have one unit left for a pass of two."""
    result = scan(Wide().eval(), _data(n), "mid", units=units, progress=False,
                  method="prefix")
    assert _how(result.plan) == "measured on the first batch", result.plan
    if len(units) <= 2:  # (more units: how many per pass is timed, so it varies)
        assert result.plan.startswith("1 unit(s) x 20 example(s)"), result.plan


class _Scores(nn.Module):
    """A dict output whose logits are under ``scores``, beside something as wide."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Wide()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.inner(x)
        return {"aux": logits.flip(1), "scores": logits}


def test_the_suffix_reads_the_named_output() -> None:
    """The prefix engine's suffix passes pick ``output`` from the model's dict: its
    verification against real forwards passes, so the prefix engine is not refused."""
    model, data = _Scores().eval(), _data()
    result = scan(model, data, "inner.mid", output="scores", progress=False,
                  method="prefix")  # refused if the verification failed
    assert np.array_equal(result.predictions, _naive(model.inner, data, "mid", range(8)))


def test_the_naive_loop_is_weighed_per_example_on_the_first_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that moves one second per reading, the first batch (20 examples) takes
    1 s for the prefix and 2 s in all: the comparison gets 1/20 and 2/20 s per example,
    the measured cost of a unit, and the number of units."""
    from types import SimpleNamespace

    clock = iter(range(10**6))
    monkeypatch.setattr(scan_fx, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    weighed: list[tuple[Any, ...]] = []

    def slower(*args: Any) -> bool:
        weighed.append(args)
        return False

    monkeypatch.setattr(scan_fx, "slower_than_naive", slower)
    result = scan(Wide().eval(), _data(), "mid", progress=False)
    assert result.method == "prefix"
    ((prefix, per_unit, whole, units),) = weighed
    assert (prefix, whole, units) == (pytest.approx(1 / 20), pytest.approx(2 / 20), 8)
    assert per_unit > 0
