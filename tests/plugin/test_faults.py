"""Faults a CI runner brings: a worker killed mid-sweep, two jobs sharing one cold cache.

The model is a small seeded MLP on noisy one-hot inputs (not 100% accurate), the spec has
named checks and layer-wide sweeps; every run's JSON report is compared, byte for byte,
with a serial run on a cache of its own.

* ``KILL_IN`` / ``KILL_AT``: the process running an item whose id contains ``KILL_IN``
  SIGKILLs itself at the ``KILL_AT``-th call of the model's last layer (in the middle of
  that item's sweep, past its baseline);
* ``KILL_ON_STORE``: the process SIGKILLs itself halfway through writing its first cache
  entry (half the bytes on disk);

each at most once per run (the first process to create ``killed.marker`` dies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

#: seconds a pytest run may take here (a lock left by a killed process would block)
RUN_TIMEOUT = 300

MODEL = '''
import os
import signal
import torch
from torch import nn

_calls = {"n": 0}


def _die_once():
    try:
        os.close(os.open("killed.marker", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _maybe_kill(module, args, output):
    where = os.environ.get("KILL_IN")
    if where and where in os.environ.get("PYTEST_CURRENT_TEST", ""):
        _calls["n"] += 1
        if _calls["n"] == int(os.environ["KILL_AT"]):
            _die_once()


class _CutShort:
    """A cache entry's file that dies halfway through its first write."""

    def __init__(self, fh):
        self._fh = fh

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._fh.__exit__(*exc)

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        _die_once()
        return self._fh.write(data[len(data) // 2:]) + len(data) // 2


if os.environ.get("KILL_ON_STORE"):
    import builtins

    _fdopen, _open = os.fdopen, builtins.open

    def _fdopen_then_die(fd, mode="r", *a, **k):
        fh = _fdopen(fd, mode, *a, **k)
        named = os.readlink(f"/proc/self/fd/{fd}")
        return _CutShort(fh) if ".npz" in named and "w" in mode else fh

    def _open_then_die(file, mode="r", *a, **k):
        fh = _open(file, mode, *a, **k)
        return _CutShort(fh) if ".npz" in str(file) and "w" in mode else fh

    os.fdopen, builtins.open = _fdopen_then_die, _open_then_die


def model():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                        nn.Linear(12, 4))
    role = torch.nn.functional.one_hot(torch.arange(12) % 4, 4).float()  # unit i: class i % 4
    with torch.no_grad():
        net[0].weight.copy_(2 * role + 0.2 * torch.randn(12, 4, generator=g))
        net[2].weight.copy_(torch.eye(12) + 0.1 * torch.randn(12, 12, generator=g))
        net[4].weight.copy_(role.T * (1 + torch.arange(12) / 6)
                            + 0.1 * torch.randn(4, 12, generator=g))
        for layer in (net[0], net[2], net[4]):
            layer.bias.zero_()
    net[4].register_forward_hook(_maybe_kill)
    return net.eval()


def data():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat(40)
    x = torch.nn.functional.one_hot(labels, 4).float() + 0.6 * torch.randn(160, 4, generator=g)
    return [(x[i:i + 32], labels[i:i + 32]) for i in range(0, 160, 32)]
'''

SPEC = """\
unitablate: 1
model: faultmodel:model
data: faultmodel:data
classes: [zero, one, two, three]
checks:
  - layer: "1"
    units: [0]
    expect:
      zero: {min_drop: 5%}
  - layer: "1"
    every_unit:
      expect:
        overall: {max_drop: 20%}
  - layer: "3"
    any_unit:
      expect:
        three: {min_drop: 30%}
  - layer: "3"
    every_unit:
      expect:
        overall: {max_drop: 2%}
"""


@pytest.fixture
def faulty(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(faultmodel=MODEL)
    (tiny.path / "spec.yaml").write_text(SPEC)
    return tiny


def _args(report: str, cache: str, *extra: str) -> list[str]:
    """The spec, its report, and ``cache``: a cache folder, or ``off`` (no cacheprovider)."""
    where = ["-p", "no:cacheprovider"] if cache == "off" else ["-o", f"cache_dir={cache}"]
    return ["--unitablate-spec", "spec.yaml", "-p", "no:randomly", *where,
            "--unitablate-report", report, *extra]


def _outcomes(p: pytest.Pytester, report: str) -> dict[str, str]:
    items = json.loads((p.path / report).read_text())["items"]
    return {i["id"]: i["outcome"] for i in items}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "KILL_IN", "KILL_AT", "KILL_ON_STORE")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(p: pytest.Pytester, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (p.path / "killed.marker").unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=p.path, env=_env(
        PYTHONPATH=str(p.path), **env), capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.mark.slow
@pytest.mark.requires_xdist
def test_two_jobs_on_one_cold_cache_then_a_worker_killed_mid_sweep_and_mid_store(
        faulty: pytest.Pytester) -> None:
    reference = _run(faulty, *_args("reference.json", "off"))
    assert reference.returncode == 1, reference.stdout + reference.stderr
    expected = _outcomes(faulty, "reference.json")
    assert len(expected) == 4 and set(expected.values()) == {"passed", "failed"}
    want = (faulty.path / "reference.json").read_bytes()

    # two CI jobs start at once on one cold cache: both finish, with the reference's bytes
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pytest", *_args(f"job{n}.json", "shared", "-p", "no:xdist")],
        cwd=faulty.path, env=_env(PYTHONPATH=str(faulty.path)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for n in (1, 2)]
    outs = [proc.communicate(timeout=RUN_TIMEOUT)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [1, 1], outs
    assert [(faulty.path / f"job{n}.json").read_bytes() for n in (1, 2)] == [want, want]
    assert list((faulty.path / "shared").rglob("*.npz"))

    # on another cold cache, a worker dies in the middle of layer "1"'s every_unit sweep
    crashed = _run(faulty, *_args("crash.json", "cold", "-n", "2"),
                   KILL_IN="1-every", KILL_AT="7")
    out = crashed.stdout
    assert (faulty.path / "killed.marker").exists(), out
    assert "crashed while running" in out and "replacing crashed worker" in out, out
    got = _outcomes(faulty, "crash.json")
    dead = [i for i in expected if i not in got]
    assert len(dead) == 1 and "1-every" in dead[0], (got, out)
    assert all(got[i] == expected[i] for i in got), (got, expected)

    # then one dies halfway through writing a cache entry (what the first left unstored)
    crashed = _run(faulty, *_args("crash2.json", "cold", "-n", "2"), KILL_ON_STORE="1")
    assert (faulty.path / "killed.marker").exists() and "crashed while running" in \
        crashed.stdout, crashed.stdout
    got = _outcomes(faulty, "crash2.json")
    assert len(got) == 3 and all(got[i] == expected[i] for i in got), (got, expected)
    # the half-written entry is a temporary file; every file under an entry's name is whole
    assert list((faulty.path / "cold").rglob("*.npz.*.tmp")), "no store was cut short"
    for entry in (faulty.path / "cold").rglob("*.npz"):
        with np.load(entry) as npz:
            assert all(npz[name] is not None for name in npz.files), entry

    # the next run on that cache: every item, as the reference, byte for byte
    again = _run(faulty, *_args("again.json", "cold", "-n", "2"))
    assert "crashed" not in again.stdout, again.stdout
    assert (faulty.path / "again.json").read_bytes() == want
    assert not list((faulty.path / "shared").rglob("*.tmp"))  # finished runs leave none
