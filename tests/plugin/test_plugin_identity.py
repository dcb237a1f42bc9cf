"""identity: signature through the plugin: record, match after a permutation, a unit gone.

The model here (``tests/identity_source.py``) is a small MLP whose hidden unit k detects
class k (k < 4) on noisy one-hot inputs, so the baseline is not 100% accurate.
``PERMUTE=1`` reorders its hidden units (the same function, other indices: what a retrain
does to unit identity); ``DESTROY=1`` moves class one's evidence to the output bias so no
hidden unit carries it.
"""

from __future__ import annotations

import json
import os

import identity_source
import pytest

MODEL = identity_source.SOURCE

SPEC = """\
unitablate: 1
model: idmodel:model
data: idmodel:data
classes: [zero, one, two, three]
checks:
  - layer: "1"
    units: [1]
    identity: signature
    expect:
      one: {min_drop: 50%}
  - layer: "1"
    units: [2]
    identity: {by: signature, min_similarity: 0.9}
    expect:
      two: {min_drop: 50%}
"""


@pytest.fixture
def idmodel(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(idmodel=MODEL)
    (tiny.path / "spec.yaml").write_text(SPEC)
    return tiny


def load_one(spec: object) -> float | None:
    """The recorded min_drop of the check of unit 1 (class one)."""
    from pytest_unitablate.spec.loader import load_spec

    loaded = load_spec(spec)  # type: ignore[arg-type]
    return loaded.checks[0].expectations[0].constraints[0].threshold


def _run(p: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str,
         **env: str) -> tuple[pytest.RunResult, dict[str, dict[str, object]]]:
    for key in ("PERMUTE", "DESTROY", "PRUNE", "PRUNE2"):
        monkeypatch.setenv(key, env.get(key, "0"))
    result = p.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json",
                         "-p", "no:randomly", "-p", "no:cacheprovider", *args)
    report = p.path / "r.json"
    items = {i["id"]: i for i in json.loads(report.read_text())["items"]} \
        if report.exists() else {}
    return result, items


def test_record_then_match_after_permutation_then_unit_gone(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = idmodel.path / "spec.yaml"
    # no signature recorded yet: a located error that names the command to record it
    result, _ = _run(idmodel, monkeypatch)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "spec.yaml:8: identity: signature, but no signature of 1 unit(s) [1] is " \
        "recorded in spec.signatures.json" in out
    assert "--unitablate-record-mode=new" in out
    assert not (idmodel.path / "spec.signatures.json").exists()

    result, items = _run(idmodel, monkeypatch, "--unitablate-record-mode=new")
    result.assert_outcomes(passed=2)
    sidecar = idmodel.path / "spec.signatures.json"
    text = spec.read_text()
    assert "signatures: {file: spec.signatures.json, sha256: " in text
    assert text.splitlines()[4].startswith("signatures: {file: spec.signatures.json")
    assert "".join(text.splitlines(keepends=True)[:4] + text.splitlines(keepends=True)[5:]) \
        == SPEC  # only the signatures: line was added
    recorded = json.loads(sidecar.read_text())
    assert sorted(recorded["layers"]["1"]) == ["1", "2"]
    assert recorded["layers"]["1"]["1"]["top_classes"][0] == "one"

    # the reference again: identity mapping, similarity 1
    result, items = _run(idmodel, monkeypatch)
    result.assert_outcomes(passed=2)
    one = items["1-u1-one-min_drop"]
    assert one["matched_units"] == [1] and one["similarity"] == [pytest.approx(1.0)]
    assert one["baseline"] < 1.0  # not a 100%-accurate toy
    assert (one["identity"], one["min_similarity"], one["units"]) == ("signature", 0.75, [1])
    assert items["1-u2-two-min_drop"]["min_similarity"] == 0.9
    assert one["mapping"] == "unit 1 -> unit 1 (similarity 1.00)"

    # the hidden units permuted: found at their new positions, the checks pass
    result, items = _run(idmodel, monkeypatch, "-v", PERMUTE="1")
    result.assert_outcomes(passed=2)
    assert items["1-u1-one-min_drop"]["matched_units"] == [3]   # PERM[3] == 1
    assert items["1-u2-two-min_drop"]["matched_units"] == [5]   # PERM[5] == 2
    assert items["1-u1-one-min_drop"]["mapping"] == "unit 1 -> unit 3 (similarity 1.00)"
    result.stdout.fnmatch_lines(["*1->3*one*passed*"])

    # class one's unit destroyed: no unit matches (and the other check still passes)
    result, items = _run(idmodel, monkeypatch, DESTROY="1", PERMUTE="1")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*spec.yaml:9: 1-u1-one-min_drop: no unit of 1 matches the recorded unit 1 "
        "(best: unit *, 0.*)", "*required similarity >= 0.75*"])
    assert items["1-u1-one-min_drop"]["outcome"] == "failed"
    assert spec.read_text() == text and json.loads(sidecar.read_text()) == recorded


def test_a_pruned_unit_is_reported_dead_not_matched_to_a_neighbour(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _run(idmodel, monkeypatch, "--unitablate-record-mode=new")
    result.assert_outcomes(passed=2)
    spec = idmodel.path / "spec.yaml"
    text, sidecar = spec.read_text(), (idmodel.path / "spec.signatures.json").read_bytes()
    result, items = _run(idmodel, monkeypatch, PRUNE="1")
    result.assert_outcomes(passed=1, failed=1)
    item = items["1-u1-one-min_drop"]
    assert item["dead_units"] == [1] and item["matched_units"] == [4]
    assert item["similarity"][0] > 0.75  # matching alone would have taken unit 4
    result.stdout.fnmatch_lines([
        "1-u1 one: unit 1 of 1 is dead in the model under test",
        "spec.yaml:11: 1-u1: the recorded unit 1 of 1 is dead at its own index in the "
        "model under test: ablating it changes nothing (damage profile at 0.0% of the "
        "recorded one)*",
        "*signature matching would take unit 4 instead (similarity *): not taken*",
        f"*drop of one: {item['drop'] * 100:.1f} pp now with unit 4 ablated",
        "*delete the signatures sidecar and the spec's signatures: line, then record again "
        "with record mode new."])
    assert items["1-u2-two-min_drop"]["dead_units"] is None
    assert spec.read_text() == text
    assert (idmodel.path / "spec.signatures.json").read_bytes() == sidecar
    # record mode all does not take the neighbour's drop as the dead unit's new threshold
    result, _ = _run(idmodel, monkeypatch, "--unitablate-record-mode=all", PRUNE="1")
    result.assert_outcomes(passed=1, failed=1)
    assert load_one(spec) == 0.5


def test_two_pruned_units_do_not_excuse_each_other(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both protected units of the layer pruned and their classes partly moved to
    neighbours: each is reported dead. (Matching moves both; one moved unit must not count
    as a retrain that renumbered the units for the other.)"""
    result, _ = _run(idmodel, monkeypatch, "--unitablate-record-mode=new")
    result.assert_outcomes(passed=2)
    result, items = _run(idmodel, monkeypatch, PRUNE2="1")
    result.assert_outcomes(failed=2)
    assert items["1-u1-one-min_drop"]["dead_units"] == [1]
    assert items["1-u2-two-min_drop"]["dead_units"] == [2]
    assert items["1-u1-one-min_drop"]["matched_units"] == [4]
    assert items["1-u2-two-min_drop"]["matched_units"] == [5]
    # a retrain that renumbered the units still passes through matching
    result, items = _run(idmodel, monkeypatch, PERMUTE="1")
    result.assert_outcomes(passed=2)


def test_index_identity_fails_where_signature_identity_follows_the_unit(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(idmodel, monkeypatch, "--unitablate-record-mode=new")
    spec = idmodel.path / "spec.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("    identity: signature\n", "", 1))
    result, items = _run(idmodel, monkeypatch, PERMUTE="1")
    result.assert_outcomes(passed=1, failed=1)
    assert items["1-u1-one-min_drop"]["outcome"] == "failed"      # index 1 is another unit
    assert items["1-u1-one-min_drop"]["matched_units"] is None


def test_a_changed_sidecar_is_refused_at_the_signatures_line(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(idmodel, monkeypatch, "--unitablate-record-mode=new")
    sidecar = idmodel.path / "spec.signatures.json"
    sidecar.write_text(sidecar.read_text().replace('"one"', '"uno"', 1))
    before = (idmodel.path / "spec.yaml").read_text(), sidecar.read_text()
    result, _ = _run(idmodel, monkeypatch)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*spec.yaml:5: the signatures file *spec.signatures.json has "
                                 "sha256 *, not the * the spec recorded*"])
    assert "Traceback" not in result.stdout.str()
    assert ((idmodel.path / "spec.yaml").read_text(), sidecar.read_text()) == before
    sidecar.unlink()
    result, _ = _run(idmodel, monkeypatch)
    result.stdout.fnmatch_lines(["*spec.yaml:5: the signatures file * recorded in the spec "
                                 "is missing*"])


def test_identity_spec_errors_are_collection_errors(tiny: pytest.Pytester) -> None:
    (tiny.path / "bad.yaml").write_text("""\
unitablate: 1
model: m
data: d
signatures: {file: ../elsewhere.json, sha256: abc}
checks:
  - layer: conv
    any_unit:
      expect: {overall: {max_drop: 5%}}
    identity: signature
  - layer: conv
    units: [1]
    identity: {by: signatur, min_similarity: 2}
    expect: {overall: {max_drop: 5%}}
""")
    result = tiny.runpytest("--unitablate-spec", "bad.yaml")
    assert result.ret == 2
    result.stdout.fnmatch_lines([
        "*bad.yaml:4: signatures file '../elsewhere.json' must be a plain path next to*",
        "*bad.yaml:4: signatures sha256 'abc' is not valid (64 hex digits)*",
        "*bad.yaml:9: identity: signature is for named units*",
        "*bad.yaml:12: min_similarity must be a number between -1 and 1*",
        "*bad.yaml:12: identity must be index or signature, got *signatur*did you mean*",
    ])


def test_a_unit_whose_best_partner_was_claimed_is_judged_on_the_unit_it_got(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two recorded units with one role: the first claims the unit that fits both; the
    second is assigned another unit, whose similarity (not the best one anywhere) must
    meet min_similarity. Judged on the best, it would pass, silently mapped to a unit
    that plays another role."""
    import hashlib
    import re

    _run(idmodel, monkeypatch, "--unitablate-record-mode=new")[0].assert_outcomes(passed=2)
    sidecar = idmodel.path / "spec.signatures.json"
    doc = json.loads(sidecar.read_text())
    # unit 2 recorded with unit 1's role, nine tenths as strong: no exact tie (which one
    # claims unit 1 would then hang on the last float digits of the CPU), the same cosine
    one = doc["layers"]["1"]["1"]
    doc["layers"]["1"]["2"] = {**one, "profile": [0.9 * v for v in one["profile"]]}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    sidecar.write_text(text)
    spec = idmodel.path / "spec.yaml"
    spec.write_text(re.sub(r"sha256: [0-9a-f]{64}",
                           f"sha256: {hashlib.sha256(text.encode()).hexdigest()}",
                           spec.read_text()))
    result, items = _run(idmodel, monkeypatch)
    result.assert_outcomes(passed=1, failed=1)
    two = items["1-u2-two-min_drop"]
    assert two["outcome"] == "failed" and two["matched_units"] != [1]
    assert two["similarity"][0] < 0.9
    result.stdout.fnmatch_lines(["*1-u2-two-min_drop: no unit of 1 matches the recorded "
                                 "unit 2 (best: unit 1, 1.00)*",
                                 "*unit 1 is the match of recorded unit 1*"])


# Replays record mode's writes with a real SIGINT sent at the k-th line our package runs,
# for every k, and classifies the files after each interrupt.
_REPLAY = r'''
import json, os, pickle, signal, sys
from pathlib import Path
import pytest_unitablate
from pytest_unitablate.plugin.record_mode import apply_recorded
from pytest_unitablate.spec.signatures import sha256_text

args, spec, sidecar = pickle.loads(Path(sys.argv[1]).read_bytes()), Path(sys.argv[2]), \
    Path(sys.argv[3])
package = os.path.dirname(pytest_unitablate.__file__)
# a process started in the background without job control inherits SIGINT ignored, and
# Python then keeps it ignored: the interrupts below must arrive however the suite runs
signal.signal(signal.SIGINT, signal.default_int_handler)


def files():
    return spec.read_text(), sidecar.read_text() if sidecar.exists() else None


def put(state):
    spec.write_text(state[0])
    if state[1] is None:
        sidecar.unlink(missing_ok=True)
    else:
        sidecar.write_text(state[1])


before = files()
apply_recorded(*args)
after = files()
seen, k = {"before": 0, "after": 0, "other": 0, "disagree": 0, "leftover": 0}, 0
while True:
    k += 1
    put(before)
    lines = [0]

    def trace(frame, event, arg):
        if not frame.f_code.co_filename.startswith(package):
            return None
        if event == "line":
            lines[0] += 1
            if lines[0] == k:
                os.kill(os.getpid(), signal.SIGINT)
        return trace

    sys.settrace(trace)
    try:
        apply_recorded(*args)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sys.settrace(None)
    if not interrupted:
        break
    now = files()
    seen["before" if now == before else "after" if now == after else "other"] += 1
    if now[1] is not None and sha256_text(now[1]) not in now[0]:
        seen["disagree"] += 1
    for stray in [p for p in spec.parent.iterdir() if p.name.endswith(".tmp")]:
        seen["leftover"] += 1
        stray.unlink()
print(json.dumps({"interrupts": k - 1, **seen, "changed": before != after}))
'''


def _replayed(p: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str,
              passed: int = 2) -> dict[str, int]:
    """Run record mode once for real, capturing what it writes from, then replay it in a
    fresh process with an interrupt at every line (its counts of the states found)."""
    import pickle
    import subprocess
    import sys

    from pytest_unitablate.plugin import record_mode

    captured: list[tuple[object, ...]] = []
    real = record_mode.apply_recorded
    monkeypatch.setattr(record_mode, "apply_recorded",
                        lambda *a: captured.append(a) or [])  # type: ignore[func-returns-value]
    _run(p, monkeypatch, *args)[0].assert_outcomes(passed=passed)
    monkeypatch.setattr(record_mode, "apply_recorded", real)
    assert len(captured) == 1
    (p.path / "args.pickle").write_bytes(pickle.dumps(captured[0]))
    (p.path / "replay.py").write_text(_REPLAY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "replay.py", "args.pickle", "spec.yaml",
                           "spec.signatures.json"], cwd=p.path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    counts: dict[str, int] = json.loads(done.stdout.splitlines()[-1])
    return counts


def test_an_interrupt_anywhere_in_record_mode_leaves_spec_and_sidecar_in_step(
        idmodel: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at any line of record mode's writing: the spec and its signatures sidecar
    are both as they were or both rewritten, the spec's sha256 is the sidecar's, and no
    temporary file is left. First the sidecar is new; then it exists and gains a unit
    while the spec gains a threshold too."""
    first = _replayed(idmodel, monkeypatch, "--unitablate-record-mode=new")
    assert first["changed"] and first["interrupts"] > 50
    assert first["before"] > 0 and first["after"] > 0
    assert first["other"] == first["disagree"] == first["leftover"] == 0, first

    # record for real, then add a check with a signature and a threshold still to record
    _run(idmodel, monkeypatch, "--unitablate-record-mode=new")[0].assert_outcomes(passed=2)
    spec = idmodel.path / "spec.yaml"
    spec.write_text(spec.read_text().replace(
        "      two: {min_drop: 50%}\n", "      two: {min_drop: null}\n"))
    spec.write_text(spec.read_text() + "  - layer: \"1\"\n    units: [3]\n"
                    "    identity: signature\n    expect:\n      three: {min_drop: 10%}\n")
    second = _replayed(idmodel, monkeypatch, "--unitablate-record-mode=new", passed=3)
    assert second["changed"] and second["before"] > 0 and second["after"] > 0
    assert second["other"] == second["disagree"] == second["leftover"] == 0, second
