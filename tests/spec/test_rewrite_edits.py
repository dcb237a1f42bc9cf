"""Record mode's text edits, each against the exact text it should leave: the provenance
block (updated in place, keys added, a new block appended), the ``signatures:`` entry,
end-of-line comments (a user's kept, several thresholds on one line), the refusals when
the spec changed under the run, and what ``discover`` reads back from a comment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pytest_unitablate.spec.rewrite import (
    RecordError,
    ThresholdUpdate,
    apply_updates,
    format_threshold,
    recorded_measurement,
    rewritten_spec,
)

HEAD = "model: m\ndata: d\n"
CHECK = """\
checks:
  - layer: conv5
    units: [3]
    expect:
      seven: {min_drop: 10%}
"""
SEVEN = ThresholdUpdate(0, None, "seven", "min_drop", 0.08, 0.2, 0.12)
SEVEN_LINE = "      seven: {min_drop: 8.0%}  # recorded: measured 20.0 pp, margin 12.0 pp\n"


def rewrite(tmp_path: Path, text: str, updates: list[ThresholdUpdate] | None = None,
            **kwargs: object) -> str:
    spec = tmp_path / "s.yaml"
    spec.write_bytes(text.encode("utf-8"))
    _, result, _ = rewritten_spec(spec, [SEVEN] if updates is None else updates,
                                  **kwargs)  # type: ignore[arg-type]
    return result


# --- provenance ---------------------------------------------------------------------


def test_an_existing_block_is_updated_in_place_and_missing_keys_follow_its_last_line(
        tmp_path: Path) -> None:
    text = HEAD + "provenance:\n    torch: \"2.1\"\n    device: cpu  # where\n" + CHECK
    result = rewrite(tmp_path, text, [], provenance={
        "torch": "2.14", "device": "cpu", "dtype": "float32", "data_sha256": "ab"})
    assert result == HEAD + (
        "provenance:\n"
        "    torch: \"2.14\"\n"
        "    device: cpu  # where\n"  # unchanged: left as the user wrote it
        "    data_sha256: \"ab\"\n"
        "    dtype: \"float32\"\n") + CHECK


def test_keys_go_after_the_last_line_of_a_block_that_is_not_last(tmp_path: Path) -> None:
    text = HEAD + "provenance:\n  torch: \"2.14\"\n" + CHECK
    assert rewrite(tmp_path, text, [], provenance={"device": "cpu"}) == (
        HEAD + "provenance:\n  torch: \"2.14\"\n  device: \"cpu\"\n" + CHECK)


def test_a_block_of_one_key_gets_the_others_at_its_indentation(tmp_path: Path) -> None:
    text = HEAD + CHECK + "provenance:\n  torch: \"2.14\""  # no final line break
    assert rewrite(tmp_path, text, [], provenance={"torch": "2.14", "device": "cpu"}) == (
        HEAD + CHECK + "provenance:\n  torch: \"2.14\"\n  device: \"cpu\"")


def test_values_are_quoted_so_yaml_reads_them_back_unchanged(tmp_path: Path) -> None:
    odd = 'C:\\torch "nightly": #1'
    result = rewrite(tmp_path, HEAD + CHECK, [], provenance={"torch": odd})
    assert yaml.safe_load(result)["provenance"] == {"torch": odd}


@pytest.mark.parametrize(("text", "sep"), [
    (HEAD + CHECK, ""),  # ends with a line break: none added
    (HEAD + CHECK.rstrip("\n"), "\n"),  # does not: one added first
    ((HEAD + CHECK).replace("\n", "\r\n"), ""),  # CRLF stays CRLF
])
def test_a_spec_without_a_block_gets_one_appended(tmp_path: Path, text: str,
                                                   sep: str) -> None:
    nl = "\r\n" if "\r\n" in text else "\n"
    result = rewrite(tmp_path, text, [], provenance={"torch": "2.14", "device": "cpu"})
    assert result == text + sep + f"provenance:{nl}  device: \"cpu\"{nl}  torch: \"2.14\"{nl}"


def test_a_flow_style_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordError) as info:
        rewrite(tmp_path, HEAD + "provenance: {torch: x}\n" + CHECK, [],
                provenance={"torch": "y"})
    assert str(info.value) == ("the provenance: entry is not a block mapping; remove it and "
                               "record again")


# --- signatures ---------------------------------------------------------------------


def test_the_signatures_entry_is_replaced_whole(tmp_path: Path) -> None:
    text = HEAD + "signatures: {file: old.json, sha256: 00}  # mine\n" + CHECK
    assert rewrite(tmp_path, text, [], signatures=("s.json", "ff")) == (
        HEAD + "signatures: {file: s.json, sha256: ff}  # mine\n" + CHECK)


def test_a_spec_without_one_gets_it_before_its_checks(tmp_path: Path) -> None:
    text = "\n" + CHECK + HEAD  # a blank first line, the checks first
    assert rewrite(tmp_path, text, [], signatures=("s.json", "ff")) == (
        "\nsignatures: {file: s.json, sha256: ff}  # written by record mode (identity: "
        "signature)\n" + CHECK + HEAD)


def test_apply_updates_writes_the_signatures_entry(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + CHECK, encoding="utf-8")
    assert apply_updates(spec, [], signatures=("s.json", "ff")) == 0
    assert "signatures: {file: s.json, sha256: ff}" in spec.read_text(encoding="utf-8")


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "the spec is not a mapping"),
    (HEAD, "the spec has no checks: entry"),
])
def test_a_signatures_entry_needs_a_mapping_with_checks(tmp_path: Path, text: str,
                                                        message: str) -> None:
    with pytest.raises(RecordError) as info:
        rewrite(tmp_path, text, [], signatures=("s.json", "ff"))
    assert str(info.value) == message


# --- where the threshold was ----------------------------------------------------------


@pytest.mark.parametrize(("text", "update", "message"), [
    (HEAD + CHECK, ThresholdUpdate(1, None, "seven", "min_drop", 0.1, 0.2, 0.1),
     "check #2 no longer exists"),
    (HEAD + "checks: {a: 1}\n", SEVEN, "check #1 no longer exists"),
    (HEAD + CHECK, ThresholdUpdate(0, "any_unit", "seven", "min_drop", 0.1, 0.2, 0.1),
     "check #1 no longer has the expected shape"),
    (HEAD + CHECK.replace("{min_drop: 10%}", "10%"), SEVEN,
     "target 'seven' of check #1 is not a mapping"),
    (HEAD + CHECK.replace("seven", "two"), SEVEN, "target 'seven' not found in check #1"),
    (HEAD + CHECK.replace("min_drop", "max_drop"), SEVEN,
     "min_drop of target 'seven' in check #1 no longer exists"),
    (HEAD + CHECK + "  - [unclosed\n", SEVEN, "the spec no longer parses: "),
])
def test_a_spec_that_changed_under_the_run_is_refused_with_where(
        tmp_path: Path, text: str, update: ThresholdUpdate, message: str) -> None:
    with pytest.raises(RecordError) as info:
        rewrite(tmp_path, text, [update])
    assert str(info.value).startswith(message)
    assert message.endswith(": ") or str(info.value) == message


def test_a_numeric_target_matches_its_yaml_key(tmp_path: Path) -> None:
    text = HEAD + CHECK.replace("seven", "7")
    update = ThresholdUpdate(0, None, 7, "min_drop", 0.08, 0.2, 0.12)
    assert rewrite(tmp_path, text, [update]) == HEAD + CHECK.replace(
        "      seven: {min_drop: 10%}\n", SEVEN_LINE.replace("seven", "7"))


def test_the_last_line_of_a_spec_without_a_final_break(tmp_path: Path) -> None:
    assert rewrite(tmp_path, HEAD + CHECK.rstrip("\n")) == HEAD + CHECK.replace(
        "      seven: {min_drop: 10%}\n", SEVEN_LINE).rstrip("\n")


# --- comments -----------------------------------------------------------------------


@pytest.mark.parametrize(("comment", "written"), [
    ("", "  # recorded: measured 20.0 pp, margin 12.0 pp"),
    ("  #", "  # recorded: measured 20.0 pp, margin 12.0 pp"),  # an empty comment
    ("  #keep", "  # keep; recorded: measured 20.0 pp, margin 12.0 pp"),  # no space after #
    ("  # BOX", "  # BOX; recorded: measured 20.0 pp, margin 12.0 pp"),
    ("  # mine; recorded: measured 1.0 pp, margin 0.0 pp",
     "  # mine; recorded: measured 20.0 pp, margin 12.0 pp"),  # the old record replaced
    ("  # mine; calibrated over 3 models: measured 1.0-2.0 pp",
     "  # mine; recorded: measured 20.0 pp, margin 12.0 pp"),
])
def test_a_users_comment_is_kept_before_the_record(tmp_path: Path, comment: str,
                                                   written: str) -> None:
    text = HEAD + CHECK.replace("{min_drop: 10%}", "{min_drop: 10%}" + comment)
    assert rewrite(tmp_path, text) == HEAD + CHECK.replace("{min_drop: 10%}",
                                                            "{min_drop: 8.0%}" + written)


def test_two_thresholds_on_one_line_share_one_comment(tmp_path: Path) -> None:
    text = HEAD + CHECK.replace("{min_drop: 10%}", "{min_drop: 10%, max_drop: 90%}")
    low = ThresholdUpdate(0, None, "seven", "min_drop", 0.08, 0.2, 0.12)
    high = ThresholdUpdate(0, None, "seven", "max_drop", 0.3, 0.2, 0.1)
    assert rewrite(tmp_path, text, [low, high]).splitlines()[-1] == (
        "      seven: {min_drop: 8.0%, max_drop: 30.0%}  # recorded: max_drop measured "
        "20.0 pp, margin 10.0 pp; min_drop measured 20.0 pp, margin 12.0 pp")
    over = "over 3 models: measured 60.0-95.0 pp"
    calibrated = [ThresholdUpdate(0, None, "seven", "min_drop", 0.08, 0.2, 0.12, over),
                  ThresholdUpdate(0, None, "seven", "max_drop", 0.3, 0.2, 0.1, over)]
    assert rewrite(tmp_path, text, calibrated).splitlines()[-1] == (
        "      seven: {min_drop: 8.0%, max_drop: 30.0%}  # calibrated max_drop " + over +
        "; min_drop " + over)


def test_targets_on_one_line_are_commented_in_target_order(tmp_path: Path) -> None:
    text = HEAD + CHECK.replace("seven: {min_drop: 10%}",
                                "{seven: {min_drop: 10%}, two: {min_drop: 10%}}")
    text = text.replace("expect:\n      {", "expect: {").replace("}}\n", "}}\n")
    seven = ThresholdUpdate(0, None, "seven", "min_drop", 0.08, 0.2, 0.12)
    two = ThresholdUpdate(0, None, "two", "min_drop", 0.05, 0.3, 0.25)
    line = rewrite(tmp_path, text, [two, seven]).splitlines()[-1]
    assert line.endswith("# recorded: min_drop measured 20.0 pp, margin 12.0 pp; "
                         "min_drop measured 30.0 pp, margin 25.0 pp")


def test_a_log_prob_threshold_is_written_in_thousandths_of_a_nat() -> None:
    assert format_threshold("min_logprob_drop", 1.0) == "1.000"
    assert format_threshold("max_logprob_drop", -1e-9) == "0.000"  # never "-0.000"
    assert format_threshold("max_drop", -1e-9) == "0.0%"
    assert format_threshold("min_drop", -0.0001) == "-0.1%"


# --- reading a comment back -----------------------------------------------------------


@pytest.mark.parametrize(("line", "kind", "measured"), [
    ("  one: {min_accuracy: 89.8%}  # recorded: measured 97.1%, margin 7.2%",
     "min_accuracy", "measured 97.1%"),
    ("  one: {min_accuracy: 89.8%}  # mine; recorded: measured 97.1%, margin 7.2%",
     "min_drop", "measured 97.1%"),  # a single record names no kind: it is the line's
    ("  one: {min_drop: 1%, max_drop: 9%}  # recorded: max_drop measured 2.0 pp, margin "
     "7.0 pp; min_drop measured 5.0 pp, margin 4.0 pp", "min_drop", "measured 5.0 pp"),
    ("  one: {min_drop: 1%, max_drop: 9%}  # recorded: max_drop measured 2.0 pp, margin "
     "7.0 pp; min_drop measured 5.0 pp, margin 4.0 pp", "max_drop", "measured 2.0 pp"),
    ("  one: {min_drop: 1%, max_drop: 9%}  # recorded: max_drop measured 2.0 pp, margin "
     "7.0 pp; min_drop measured 5.0 pp, margin 4.0 pp", "min_accuracy", None),
    ("  one: {min_drop: 1%}  # recorded: max_drop measured 2.0 pp, margin 7.0 pp",
     "min_drop", None),  # one record, of another kind
    ("  one: {min_drop: 1%}  # measured by hand: 5 pp", "min_drop", None),
    ("  one: {min_drop: 1%}", "min_drop", None),
])
def test_what_a_comment_says_was_measured(line: str, kind: str,
                                          measured: str | None) -> None:
    assert recorded_measurement(line, kind) == measured
