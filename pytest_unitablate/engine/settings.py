"""How the engine runs: device, seed, caches, record mode (torch-free).

One :class:`EngineSettings` per engine; the pytest plugin builds it from its options, and
:func:`pytest_unitablate.run_spec` from its keyword arguments.

Example::

    >>> s = EngineSettings(device="cpu", seed=0)
    >>> s.rerun_command("failed", "specs/resnet.yaml")
    'pytest --unitablate-spec specs/resnet.yaml --unitablate-record-mode=failed'
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

#: The default memory budget of a layer sweep's stacked passes (2 GiB), as
#: :data:`pytest_unitablate.core.scan.DEFAULT_MEMORY_BUDGET` (kept torch-free here).
DEFAULT_MEMORY_BUDGET = 2 * 1024**3

#: ``progress(label, total) -> callback(done, total)`` or ``None``: per-sweep progress.
#: ``label`` names the check's sweep (``spec.yaml:LINE layer``), ``total`` counts its
#: (unit, example) pairs (for an early-stopped sweep, the whole layer's) and ``done`` those
#: finished; an early-stopped sweep reports all its chunks through one callback.
ProgressFactory = Callable[[str, "int | None"], "Callable[[int, int | None], None] | None"]


@dataclass(frozen=True)
class EngineSettings:
    """Everything that decides how the engine evaluates and judges, but not what."""

    device: str = "cpu"
    #: ``torch.manual_seed(seed)`` before every pass (``None``: never seeded)
    seed: int | None = 0
    #: let unexpected exceptions from the model through with their traceback
    full_trace: bool = False
    #: bytes a sweep's stacked suffix passes may hold (``None``: the core's default)
    memory_budget: int | None = None
    #: layer-wide checks evaluate every unit (no early stop)
    full_sweeps: bool = False
    #: named checks get their own full forward passes (no grouping through the scan engine)
    plain_passes: bool = False
    #: record mode of the run: ``none``, ``new``, ``failed``, ``all`` or ``calibrate`` (the
    #: front end writes specs after the run; the engine measures what record mode needs)
    record_mode: str = "none"
    #: confidence level of intervals and of recorded bounds
    record_level: float = 0.95
    #: the smallest ``min_*`` threshold record mode may write (a fraction)
    record_floor: float = 0.0
    #: the share of the measured effect a recorded ``min_*`` bound must keep (0: any)
    record_min_share: float = 0.5
    #: (this process's index, number of processes) of an xdist run: processes that need the
    #: same sweep split it into pieces and each takes the pieces no other one holds
    worker: tuple[int, int] = (0, 1)
    #: the command a failure says to run to re-record; ``None``: ``pytest --unitablate-spec
    #: SPEC --unitablate-record-mode=MODE``
    rerun: Callable[[str], str] | None = None
    progress: ProgressFactory | None = None
    #: the weights file the front end knows chose the model under test (the value of
    #: ``MODEL_WEIGHTS`` when it names a file); records name it when the model's fixture
    #: did not set ``unitablate_checkpoint``
    weights_source: Callable[[], str | None] | None = None
    #: hash the weights and data into every record (the review page's run facts); record
    #: mode does regardless (its provenance)
    run_facts: bool = False
    #: how this front end spells the option that makes layer-wide checks evaluate every
    #: unit (messages name it)
    full_sweeps_option: str = "--unitablate-full-sweeps"
    #: how this front end spells the device option (messages name it)
    device_option: str = "--unitablate-device"
    #: how this front end asks for the traceback of an unexpected error
    full_trace_option: str = "full_trace=True"

    def rerun_command(self, mode: str, spec: str) -> str:
        """The re-record command a failure text ends with."""
        if self.rerun is not None:
            return self.rerun(mode)
        return shlex.join(["pytest", "--unitablate-spec", spec,
                           f"--unitablate-record-mode={mode}"])


_DEVICE_PREFIXES = ("cpu", "cuda", "mps", "xpu", "meta")


def device_problem(device: str) -> str | None:
    """Why ``device`` is not a torch device name, or ``None`` when it is one.

    >>> device_problem("cuda:1") is None, device_problem("gpu")
    (True, "'gpu' is not a torch device (cpu, cuda, cuda:1, mps)")
    """
    prefix, _, index = device.partition(":")
    if prefix not in _DEVICE_PREFIXES or (index and not index.isdigit()):
        return f"{device!r} is not a torch device (cpu, cuda, cuda:1, mps)"
    return None


_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def parse_size(text: str) -> int:
    """Bytes from ``"512MiB"``, ``"4 GiB"``, ``"1.5GB"`` or a plain number of bytes;
    ``ValueError`` for anything else or a size below one byte.

    >>> parse_size("512MiB"), parse_size("2 GiB"), parse_size("1000")
    (536870912, 2147483648, 1000)
    """
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if found is None or (unit and unit not in _UNITS):
        raise ValueError(f"must be a size such as 512MiB or 4GiB, got {text!r}")
    size = int(float(found.group(1)) * _UNITS.get(unit, 1))
    if size < 1:
        raise ValueError(f"must be positive, got {text!r}")
    return size


__all__ = ["DEFAULT_MEMORY_BUDGET", "EngineSettings", "ProgressFactory", "device_problem",
           "parse_size"]
