"""Pairing is verified, never assumed: data that cannot replay the baseline's examples in the
baseline's order is a located error at the spec's ``data:`` line, saying what to change."""

from __future__ import annotations

import pytest
import tiny_source
from tiny_source import ALL_ENGINES as BODY
from tiny_source import HEAD, spec


@pytest.fixture
def pairing(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(pairing=tiny_source.PAIRING)
    return tiny


@pytest.mark.parametrize(("source", "message"), [
    ("pairing:shuffled", "spec.yaml:3: the DataLoader draws its examples with RandomSampler "
                         "(shuffle=True)*Build it with shuffle=False*"),
    ("pairing:one_shot", "spec.yaml:3: the data is a one-shot iterator (generator)*"
                         "the generator function itself, not its result*"),
    ("pairing:jittered", "spec.yaml:3: the baseline pass did not see the examples of the pass "
                         "that fingerprinted the data in the same order (the inputs differ)*"),
    # without the disk cache no fingerprint pass is made: the first ablated pass catches it
    ("pairing:jittered --unitablate-cache=off",
     "spec.yaml:3: the pass with hidden units [[]1[]] ablated did not see the baseline's "
     "examples in the baseline's order (the inputs differ)*"),
])
def test_unpairable_data_is_a_located_error(pairing: pytest.Pytester, source: str,
                                            message: str) -> None:
    source, *options = source.split()
    spec(pairing, BODY, head=HEAD.replace("data: tinymodel:data", f"data: {source}"))
    result = pairing.runpytest("--unitablate-spec", "spec.yaml", *options)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str()


def test_the_same_spec_on_replayable_data_passes(pairing: pytest.Pytester) -> None:
    spec(pairing, BODY)
    pairing.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=4)
