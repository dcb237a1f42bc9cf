"""Where ``mean`` and ``resample`` ablation take their values through the engine: heads
whose count only the spec states (``num_heads:``), and channels on a channels-last axis
(``channel_dim: -1``), each against the test's own computation."""

from __future__ import annotations

from pathlib import Path

import torch
from attention_models import QuietNet
from torch import nn

from pytest_unitablate import run_spec


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, 3, generator=g)
    return [(x, torch.randint(0, 4, (60,), generator=g))]


def _record(spec: Path, fixtures: dict[str, object]) -> dict[str, object]:
    run = run_spec(spec, fixtures=fixtures)
    assert len(run.items) == 1
    item = run.items[0]
    assert item.outcome in ("passed", "failed"), item.message
    return dict(item.record)


def test_heads_counted_only_by_the_spec_take_mean_and_resample_values(
        tmp_path: Path) -> None:
    torch.manual_seed(1)
    model, data = QuietNet().eval(), _data()
    for ablation in ("mean", "resample"):
        spec = tmp_path / f"{ablation}.yaml"
        spec.write_text(f"unitablate: 1\nmodel: m\ndata: d\nablation: {ablation}\n"
                        "unit: head\nnum_heads: 2\nchecks:\n  - layer: attn.o_proj\n"
                        "    units: [0]\n    expect:\n      overall: {max_drop: 100%}\n")
        record = _record(spec, {"m": model, "d": data})
        assert record["ablated"] is not None


class Wide(nn.Module):
    """``hidden``'s units are the last axis of (batch, tokens, 4); the logits read them."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x)).mean(dim=1))  # type: ignore[no-any-return]


def test_channels_last_means_are_taken_on_the_named_axis(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model, data = Wide().eval(), _data()
    x, y = data[0]
    with torch.no_grad():
        out = model.hidden(x)  # (60, 4 tokens, 4 units)
        mean = out.reshape(-1, 4).mean(dim=0)  # per unit, over examples and tokens
        ablated = out.clone()
        ablated[..., 2] = mean[2]
        logits = model.head(torch.relu(ablated).mean(dim=1))
        base = model.head(torch.relu(out).mean(dim=1))
    want = float((base.argmax(1) == y).float().mean() - (logits.argmax(1) == y).float().mean())
    spec = tmp_path / "s.yaml"
    spec.write_text("unitablate: 1\nmodel: m\ndata: d\nablation: mean\nchannel_dim: -1\n"
                    "checks:\n  - layer: hidden\n    units: [2]\n    expect:\n"
                    "      overall: {max_drop: 100%}\n")
    record = _record(spec, {"m": model, "d": data})
    assert abs(float(record["drop"]) - want) < 1e-9  # type: ignore[arg-type]
