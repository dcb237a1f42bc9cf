"""The starter spec for heads and for channels-last layers, a layer that carries nothing,
and the errors of ``discover_calibrated`` word for word."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_starter import ALPHAS, Bypass, data
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.engine.starter import discover_calibrated, skeleton
from pytest_unitablate.spec.loader import load_spec


class TwoHeads(nn.Module):
    """``nn.MultiheadAttention`` over one token: with identity value and output
    projections head 0 carries features 0-1 and head 1 features 2-3; ``alpha * x``
    bypasses it (each class keeps that share when its head is ablated)."""

    def __init__(self, alpha: list[float], dead_head: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        with torch.no_grad():
            self.attn.in_proj_weight.zero_()
            self.attn.in_proj_weight[8:].copy_(torch.eye(4))
            self.attn.in_proj_bias.zero_()
            self.attn.out_proj.weight.copy_(torch.eye(4))
            self.attn.out_proj.bias.zero_()
            if dead_head is not None:
                rows = slice(8 + 2 * dead_head, 8 + 2 * dead_head + 2)
                self.attn.in_proj_weight[rows] = 0.0
        self.alpha = nn.Parameter(torch.tensor(alpha), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(1)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return out[:, 0] + self.alpha * x  # type: ignore[no-any-return]


class ChannelsLast(nn.Module):
    """The units of ``hidden`` are the last axis of a (batch, 1, 4) output; ``idle``
    computes units the logits never see (ablating one changes nothing)."""

    def __init__(self, alpha: list[float]) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 4, bias=False)
        self.idle = nn.Linear(4, 4)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(4))
        self.alpha = nn.Parameter(torch.tensor(alpha), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.hidden(x.unsqueeze(1))[:, 0]
        idle = self.idle(x.unsqueeze(1))[:, 0]
        return wide + self.alpha * x + 0.0 * idle  # type: ignore[no-any-return]


def test_a_head_starter_names_its_heads_and_guards_them(tmp_path: Path) -> None:
    out = tmp_path / "specs" / "lm" / "heads.yaml"  # folders that do not exist yet
    refs = [TwoHeads(ALPHAS[v]).eval() for v in (0, 1, 2)]
    text = discover_calibrated(refs, data(), ["attn"], out, model_ref="m", data_ref="d",
                               unit="head", num_heads=2)
    assert "\nablation: zero\nunit: head\nnum_heads: 2\nchecks:\n" in text
    assert "channel_dim" not in text
    assert [c.layer for c in load_spec(out).checks] == ["attn", "attn"]
    # targets are class indices (no class names given), read from the model's output
    assert "classes:" not in text and "\n        3: {" in text
    honest = run_spec(out, fixtures={"m": TwoHeads(ALPHAS[1]).eval(), "d": data()})
    assert honest.ok, honest.text()
    broken = run_spec(out, fixtures={"m": TwoHeads(ALPHAS[1], dead_head=0).eval(),
                                     "d": data()})
    assert {r["id"] for r in broken.failed} >= {"attn-any_head-class0-min_drop",
                                                "attn-any_head-class1-min_drop"}


def test_a_channels_last_starter_says_its_axis_and_comments_out_an_idle_layer(
        tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    refs = [ChannelsLast(ALPHAS[v]).eval() for v in (0, 1, 2)]
    text = discover_calibrated(refs, data(), ["hidden", "idle"], out, model_ref="m",
                               data_ref="d", classes=["a", "b", "c", "d"], channel_dim=2)
    lines = text.splitlines()
    assert "\nablation: zero\nchannel_dim: 2\nchecks:\n" in text
    assert "\nunit:" not in text
    # every target of idle's any_unit check is unguardable: the whole check is a comment,
    # its indentation kept; its every_unit guard on overall stays
    start = lines.index("  # - layer: idle")
    assert lines[start:start + 3] == ["  # - layer: idle", "  #   any_unit:",
                                      "  #     expect:"]
    assert [line[:50] for line in lines[start + 3:start + 7]] == [
        f"        # {k}:  # unguardable: min_drop (0.0-0.0 pp)" for k in "abcd"]
    assert lines[start + 7:start + 10] == ["  - layer: idle", "    every_unit:",
                                           "      expect:"]
    assert lines[start + 10].startswith("        overall: {max_drop: ")
    spec = load_spec(out)
    assert [c.layer for c in spec.checks] == ["hidden", "hidden", "idle"]
    honest = run_spec(out, fixtures={"m": ChannelsLast(ALPHAS[1]).eval(), "d": data()})
    assert honest.ok, honest.text()


def test_the_skeleton_addresses_units_as_told_and_refuses_an_unknown_kind() -> None:
    head = skeleton(["a"], ["attn"], unit="head", num_heads=4).splitlines()
    assert head[4:7] == ["ablation: zero", "unit: head", "num_heads: 4"]
    assert skeleton(["a"], ["attn"], unit="head").splitlines()[5:7] == ["unit: head",
                                                                       "checks:"]
    wide = skeleton(["a"], ["fc"], channel_dim=-1).splitlines()
    assert wide[4:7] == ["ablation: zero", "channel_dim: -1", "checks:"]
    assert skeleton(["a"], ["fc"]).splitlines()[3:6] == ["classes: [a]", "ablation: zero",
                                                          "checks:"]
    assert "classes:" not in skeleton(["0"], ["fc"], named=False)
    with pytest.raises(ValueError, match=r"^unit: 'neuron' is not one of: channel, head$"):
        skeleton(["a"], ["fc"], unit="neuron")


def test_a_reference_that_fails_is_named_with_its_message_and_no_location(
        tmp_path: Path) -> None:
    refs = [ChannelsLast(ALPHAS[v]).eval() for v in (0, 1, 2)]
    out = tmp_path / "s.yaml"
    with pytest.raises(ValueError) as raised:
        discover_calibrated(refs, data(), ["hiden"], out, model_ref="m", data_ref="d")
    message = str(raised.value)
    assert message.startswith("measuring reference model 1 of 3: model ChannelsLast has "
                              "no layer 'hiden'; did you mean 'hidden', 'idle'?")
    assert "s.yaml:" not in message and "\n" not in message
    assert not out.exists()


def test_calibrate_keeps_each_model_once_with_where_it_was_measured(tmp_path: Path) -> None:
    """Three reference models through ``run_spec`` in record mode ``calibrate`` (one of
    them twice): the calibration file holds each model once, keyed by its weights, with
    the data and torch it was measured on, and one point per model."""
    import json

    from pytest_unitablate.verdicts.calibration import calibration_path

    spec = tmp_path / "c.yaml"
    spec.write_text("unitablate: 1\nmodel: m\ndata: d\nclasses: [a, b, c, d]\nchecks:\n"
                    "  - layer: hidden\n    units: [0]\n    expect:\n"
                    "      a: {min_drop: null}\n")
    runs = [run_spec(spec, fixtures={"m": Bypass(ALPHAS[v]).eval(), "d": data()},
                     record_mode="calibrate", record_force=True) for v in (0, 1, 1, 2)]
    weights = [str(r.items[0].record["weights_sha256"]) for r in runs]
    assert weights[1] == weights[2] and len(set(weights)) == 3
    saved = json.loads(calibration_path(spec).read_text())
    assert sorted(saved["models"]) == sorted(set(weights))
    provenance = dict(load_spec(spec).provenance)
    for meta in saved["models"].values():
        assert meta == {"data_sha256": provenance["data_sha256"],
                        "torch_version": str(torch.__version__)}
    assert sorted(saved["items"]["hidden-u0-a-min_drop"]["points"]) == sorted(set(weights))
    assert "min_drop: " in spec.read_text() and "null" not in spec.read_text()
