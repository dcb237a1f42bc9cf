"""The state one spec item carries while it is judged, and the texts every part of the
judgement shares (the spec line as it is on disk, the weights an item tested, the next
step a failure names).

:class:`ItemState` is the base of the judgement's parts: :mod:`.item_identity` (which
units ``identity: signature`` maps to), :mod:`.item_verdict` (the verdict and its text)
and :mod:`.judge` (the measurement), which puts them together.

Example::

    state = ItemState(engine, spec, subject, key)
    state.record["id"]        # the JSON report's record, filled as the item runs
    state.noun                # "unit" or "head"
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_unitablate.engine.results import Engine, ItemResult
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.verdicts.failure import LOCATION
from pytest_unitablate.verdicts.measure import Measurement
from pytest_unitablate.verdicts.records import static_record

if TYPE_CHECKING:
    from pytest_unitablate.engine.refs import Subject


@functools.lru_cache(maxsize=64)
def _spec_lines(path: str, mtime_ns: int) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text(encoding="utf-8").splitlines())
    except OSError:
        return ()


def spec_line(path: str, line: int) -> str:
    """Line ``line`` (1-based) of the spec file ``path`` as it is on disk (empty when it
    cannot be read): its end-of-line comment holds what was recorded."""
    try:
        lines = _spec_lines(path, os.stat(path).st_mtime_ns)
    except OSError:
        return ""
    return lines[line - 1] if 0 < line <= len(lines) else ""


def weights_text(record: dict[str, Any]) -> str:
    """The weights an item tested, as a failure names them: ``sha256 1a2b3c4d5e6f7a8b
    (checkpoints/candidate.pt)``; empty when they were not hashed.

    >>> weights_text({"weights_sha256": "1a2b", "checkpoint": "c.pt"}), weights_text({})
    ('sha256 1a2b (c.pt)', '')
    """
    sha = record.get("weights_sha256")
    if not sha:
        return ""
    where = f" ({record['checkpoint']})" if record.get("checkpoint") else ""
    return f"sha256 {sha}{where}"


def next_step(message: str, status: str) -> str | None:
    """What a failure says to do, for the report and the review page: its last line (the
    command that re-records the threshold, or what to look at); for a problem, fixing the
    spec line it names.

    >>> next_step("headline\\n  details\\n  To re-record: pytest --x", "failed")
    'To re-record: pytest --x'
    >>> next_step("s.yaml:4: no layer 'conv9' in the model", "error")
    'fix the spec at s.yaml:4'
    """
    if status == "error":
        found = next((m for m in map(LOCATION.match, message.splitlines()) if m), None)
        return f"fix the spec at {found.group(1)}" if found else None
    last = message.rstrip().rpartition("\n")[2].strip()
    return last or None


class ItemState:
    """The state of one item while it is judged."""

    def __init__(self, engine: Engine, spec: Spec, subject: Subject, key: ItemKey) -> None:
        self.engine, self.spec, self.subject, self.key = engine, spec, subject, key
        self.settings = engine.settings
        self.result = ItemResult(record=static_record(spec, key))
        #: the same ablation of the same examples under the other measure (accuracy or
        #: log-probability): what a weak guard's message offers instead
        self.other: Measurement | None = None
        #: identity: signature: recorded units whose own index is dead in the model under
        #: test (unit -> its profile's share of the recorded one)
        self.dead: dict[int, float] = {}
        #: the target's baseline cannot reach the item's min_* drop (a forgotten class)
        self.forgotten = False

    @property
    def record(self) -> dict[str, Any]:
        return self.result.record

    def warn(self, text: str) -> None:
        self.result.warnings.append(text)

    @property
    def noun(self) -> str:
        """What one of the check's units is called in messages: ``unit`` or ``head``."""
        return "head" if self.spec.unit_for(self.key.check) == "head" else "unit"

    def rerun(self, mode: str) -> str:
        return self.settings.rerun_command(mode, str(self.spec.path))


__all__ = ["ItemState", "next_step", "spec_line", "weights_text"]
