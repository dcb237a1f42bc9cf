"""A guard too weak to record, on the demo ViT: three MLP neurons of the first block
together cost class eight 8.6 pp over its 58 test examples, with a 95% interval from 0.2 to
18.9 pp. A recorded ``min_drop`` would be about 0.1 pp: one example meets it, and a
fine-tune that kept a tenth of the effect would pass. The engine refuses to write it and
says what would make a guard (the plugin's record mode shows the same text)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from pytest_unitablate import run_spec
from unitablate_demo import fixtures


def test_the_vit_neurons_weak_bound_is_refused_with_what_to_do(tmp_path: Path) -> None:
    spec = tmp_path / "vit_weak.yaml"
    spec.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        classes: [zero, one, two, three, four, five, six, seven, eight, nine]
        checks:
          - layer: encoder.layers.encoder_layer_0.mlp.1
            channel_dim: -1
            units: [1, 12, 23]
            expect:
              eight: {min_drop: null}
        """))
    run = run_spec(spec, fixtures={"model": fixtures.vit(), "data": fixtures.test_data()})
    (item,) = run.items
    assert item.outcome == "failed"
    text = item.message or ""
    first, second = text.splitlines()[:2]
    assert first == ("encoder.layers.encoder_layer_0.mlp.1-u1+12+23 eight: drop 8.6 pp on 58 "
                     "examples is too uncertain to guard: not recorded")
    assert "95% CI [0.2, 18.9] pp, n=58), but a guard would be weak" in second
    assert "one example of 58 (1.7 pp) meets it" in text
    assert "To guard it: evaluate on about " in text
    assert "guard it with min_logprob_drop: the same ablation shows log-prob drop 0.189 " \
        "nats" in text
