"""Record mode keeps the user's file: over generated specs (flow and block mappings, quoted
and plain values, comments, marks, LF and CRLF line endings), only the rewritten values and
their comments change, byte for byte, and the file reloads with exactly the new thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.rewrite import ThresholdUpdate, apply_updates, format_threshold

CLASSES = ["zero", "one", "two"]


@dataclass(frozen=True)
class Slot:
    """Where a threshold is: its check, target, kind, and the 0-based line in the text."""

    check: int
    target: str
    kind: str
    line: int


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, list[Slot]]:
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    ind = draw(st.sampled_from([2, 4]))
    sp = " " * ind
    lines = ["# a spec written by hand", "unitablate: 1", "model: m", "data: d",
             f"classes: [{', '.join(CLASSES)}]", "checks:"]
    slots: list[Slot] = []
    for c in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            lines.append("")
        lines += [f"{sp}- layer: conv5", f"{sp}  units: [{c}]"]
        if draw(st.booleans()):
            lines.append(f'{sp}  marks: [{{xfail: {{reason: "known", strict: true}}}}]')
        lines.append(f"{sp}  expect:")
        targets = draw(st.lists(st.sampled_from([*CLASSES, "overall"]), min_size=1,
                                max_size=3, unique=True))
        for target in targets:
            kinds = draw(st.sampled_from([["min_drop"], ["max_drop"],
                                          ["min_drop", "max_drop"]]))
            if target == "overall":
                kinds = ["max_drop"]
            values = [draw(st.sampled_from(["20%", "'20%'", '"20%"', "null", "~", "5.5%"]))
                      if k == "min_drop" else
                      draw(st.sampled_from(["90%", "'90%'", "95%"])) for k in kinds]
            comment = draw(st.sampled_from(["", "  # mine", "   # recorded: old stuff"]))
            if draw(st.booleans()):  # flow mapping on one line
                body = ", ".join(f"{k}: {v}" for k, v in zip(kinds, values, strict=True))
                lines.append(f"{sp}{sp}  {target}: {{{body}}}{comment}")
                slots += [Slot(c, target, k, len(lines) - 1) for k in kinds]
            else:
                lines.append(f"{sp}{sp}  {target}:")
                for k, v in zip(kinds, values, strict=True):
                    lines.append(f"{sp}{sp}{sp}  {k}: {v}{comment}")
                    slots.append(Slot(c, target, k, len(lines) - 1))
    return nl.join(lines) + nl, slots


@settings(max_examples=150, deadline=None)
@given(spec_and_slots=specs(), data=st.data())
def test_only_the_rewritten_values_and_their_comments_change(
    spec_and_slots: tuple[str, list[Slot]], data: st.DataObject, tmp_path_factory: object
) -> None:
    text, slots = spec_and_slots
    chosen = data.draw(st.lists(st.sampled_from(slots), min_size=1, unique=True))
    values = {s: data.draw(st.sampled_from([0.05, 0.123] if s.kind == "min_drop" else
                                           [0.5, 0.999])) for s in chosen}
    path = Path(tmp_path_factory.mktemp("spec")) / "s.yaml"  # type: ignore[attr-defined]
    path.write_bytes(text.encode())
    with_provenance = data.draw(st.booleans())
    apply_updates(path, [ThresholdUpdate(s.check, None, s.target, s.kind, values[s], 0.5, 0.1)
                         for s in chosen],
                  provenance={"torch_version": "2.14.1"} if with_provenance else None)
    new = path.read_bytes().decode()
    nl = "\r\n" if "\r\n" in text else "\n"
    # line endings kept: no bare LF in a CRLF file, no CR in an LF file
    assert (new.count("\r\n") == new.count("\n")) if nl == "\r\n" else ("\r" not in new)
    old_lines, new_lines = text.split(nl), new.split(nl)
    touched = {s.line for s in chosen}
    for i, line in enumerate(old_lines[:-1]):
        if i not in touched:
            assert new_lines[i] == line, (i, line, new_lines[i])
        else:
            code = line.split(" #")[0].rstrip()
            assert new_lines[i].startswith(code.split(":")[0])
            assert "# " in new_lines[i] and "recorded: " in new_lines[i]
            if "# mine" in line:
                assert "# mine; recorded:" in new_lines[i]
            assert "old stuff" not in new_lines[i]
    extra = new_lines[len(old_lines) - 1:]
    assert (extra != [""]) == with_provenance
    loaded = load_spec(path)
    got = {(c.index, str(e.target), k.kind): k.threshold
           for c in loaded.checks for e in c.expectations for k in e.constraints}
    for s in slots:
        key = (s.check, s.target, s.kind)
        if s in values:
            # the loader reads NN% as NN / 100 rounded to 12 decimals (0.9% is 0.009)
            want = round(float(format_threshold(s.kind, values[s]).rstrip("%")) / 100, 12)  # type: ignore[arg-type]
            assert got[key] == want
    if with_provenance:
        assert dict(loaded.provenance) == {"torch_version": "2.14.1"}
