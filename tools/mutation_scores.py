"""Per-module mutation scores from a mutmut run's ``mutants/`` folder.

mutmut prints one total; the target is per module, so this reads the ``.meta`` file
mutmut keeps beside each mutated copy and prints one row per module: mutants, killed
(a timeout counts as killed, as mutmut's own score does), survived, no tests, not yet
checked, and the score over the checked ones. ``--survivors`` lists every survivor,
``--kinds`` counts the survivors by the kind of change (a string's text, an argument
dropped or set to None, a comparison's boundary, ...: read from the mutated copy, each
mutant against its original), and ``--min 90`` exits 1 when a fully checked module scores
below it, so a scheduled CI job can fail on it.

A whole run is many hours; an estimate is not. ``--sample 45`` prints the names of a
seeded random sample of each module's unchecked mutants (all of them when it has fewer),
to run with ``mutmut run NAMES``; ``--names FILE`` then scores only the mutants named in
``FILE`` and adds the 95% Wilson interval of each module's score: an unbiased estimate of
the whole module's score when the names are such a sample.

Example (after ``make mutate``, or one chunk of it)::

    python tools/mutation_scores.py --markdown
    python tools/mutation_scores.py --only 'pytest_unitablate/engine/*' --min 90
    python tools/mutation_scores.py --sample 45 --seed 32 > sample.txt
    mutmut run $(cat sample.txt) && python tools/mutation_scores.py --names sample.txt

It reads the files only; it does not import mutmut or the package.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KILLED = {1, 3, 36, -24, 24, 152, 255, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}
NOT_CHECKED = {None}


@dataclass
class Module:
    """The counts of one module's mutants."""

    path: str
    killed: int = 0
    survived: int = 0
    no_tests: int = 0
    unchecked: int = 0
    other: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + self.survived + self.no_tests + self.unchecked + self.other

    @property
    def checked(self) -> int:
        return self.killed + self.survived + self.no_tests + self.other

    @property
    def score(self) -> float | None:
        """Killed over checked (a mutant no test runs counts against the score)."""
        return None if self.checked == 0 else 100.0 * self.killed / self.checked


def wilson(killed: int, checked: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson interval of ``killed / checked``, in percent.

    >>> [round(x, 1) for x in wilson(40, 45)]
    [76.5, 95.2]
    """
    if checked == 0:
        return 0.0, 100.0
    p = killed / checked
    centre = (p + z * z / (2 * checked)) / (1 + z * z / checked)
    half = z * math.sqrt(p * (1 - p) / checked + z * z / (4 * checked * checked)) / (
        1 + z * z / checked)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _codes(mutants: Path, only: list[str]) -> Iterator[tuple[str, dict[str, int | None]]]:
    """``(module path, mutmut's exit code by mutant)`` of each ``.meta`` file under
    ``mutants`` whose path matches ``only`` (every one when it is empty), in path order."""
    for meta in sorted(mutants.rglob("*.py.meta")):
        path = meta.relative_to(mutants).as_posix()[: -len(".meta")]
        if only and not any(fnmatch.fnmatch(path, pattern) for pattern in only):
            continue
        yield path, json.loads(meta.read_text("utf-8")).get("exit_code_by_key", {})


def sample(mutants: Path, only: list[str], size: int, seed: int) -> list[str]:
    """Up to ``size`` unchecked mutants of each module, drawn at random (``seed`` and the
    module's path fix the draw)."""
    names: list[str] = []
    for path, codes in _codes(mutants, only):
        unchecked = sorted(name for name, code in codes.items() if code in NOT_CHECKED)
        if len(unchecked) > size:
            unchecked = sorted(random.Random(f"{seed}-{path}").sample(unchecked, size))
        names += unchecked
    return names


def read(mutants: Path, only: list[str], names: set[str] | None = None) -> list[Module]:
    """One :class:`Module` per ``.meta`` file under ``mutants`` whose path matches (only
    the mutants in ``names``, when given)."""
    modules = []
    for path, codes in _codes(mutants, only):
        if names is not None:
            codes = {name: code for name, code in codes.items() if name in names}
        if not codes:
            continue
        module = Module(path)
        for name, code in sorted(codes.items()):
            if code in KILLED:
                module.killed += 1
            elif code in SURVIVED:
                module.survived += 1
                module.survivors.append(name)
            elif code in NO_TESTS:
                module.no_tests += 1
                module.survivors.append(f"{name}  (no test runs it)")
            elif code in NOT_CHECKED:
                module.unchecked += 1
            else:
                module.other += 1
        modules.append(module)
    return modules


#: (kind, the tokens whose change makes it that kind), tried in order
KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("a comparison's boundary", re.compile(r"<=|>=|<|>")),
    ("a condition (and/or/not, ==/!=, is/in)", re.compile(
        r"\band\b|\bor\b|\bnot\b|==|!=|\bis\b|\bin\b|\bTrue\b|\bFalse\b")),
    ("loop control (break/continue)", re.compile(r"\bbreak\b|\bcontinue\b")),
    ("an arithmetic operator", re.compile(r"\*\*|[-+*/%]")),
    ("a number", re.compile(r"\d+")),
]


def kind_of(before: str, after: str) -> str:
    """The kind of one mutation, from the original line(s) and the mutated one(s).

    >>> kind_of('f(x, "a b")', 'f(x, "XXa bXX")'), kind_of("f(x, y)", "f(x, None)")
    ("a string's text", 'a value set to None')
    >>> kind_of("f(x, y=1)", "f(x)"), kind_of("if a < b:", "if a <= b:")
    ('a part removed (an argument, a keyword)', "a comparison's boundary")
    """
    if "XX" in after or (before.lower() == after.lower() and before != after):
        return "a string's text"
    if after.count("None") > before.count("None"):
        return "a value set to None"
    ops = difflib.SequenceMatcher(a=before, b=after).get_opcodes()
    if all(op in ("equal", "delete") for op, *_ in ops) and len(after) < len(before):
        return "a part removed (an argument, a keyword)"
    for kind, pattern in KINDS:
        if sorted(pattern.findall(before)) != sorted(pattern.findall(after)):
            return kind
    return "other"


def _functions(source: str) -> dict[str, str]:
    lines = source.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def survivor_kinds(mutants: Path, module: Module) -> Counter[str]:
    """The survivors of ``module`` counted by :func:`kind_of`."""
    source = (mutants / module.path).read_text("utf-8")
    functions = _functions(source)
    kinds: Counter[str] = Counter()
    for entry in module.survivors:
        if entry.endswith("(no test runs it)"):
            kinds["no test runs it"] += 1
            continue
        local = entry.rsplit(".", 1)[-1]
        original = functions.get(local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "")
        mutated = functions.get(local, "")
        mutated = mutated.replace(local, local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", 1)
        old = [line for line in difflib.unified_diff(original.splitlines(),
                                                     mutated.splitlines(), n=0, lineterm="")
               if line[:1] in "-+" and line[:3] not in ("---", "+++")]
        before = " ".join(line[1:] for line in old if line.startswith("-"))
        after = " ".join(line[1:] for line in old if line.startswith("+"))
        kinds[kind_of(before, after)] += 1
    return kinds


def table(modules: list[Module], markdown: bool, interval: bool = False) -> str:
    """The per-module table, in markdown or plain columns (``interval``: with the 95%
    Wilson interval of each score)."""
    head = ["module", "mutants", "killed", "survived", "no tests", "unchecked", "score"]
    head += ["95% interval"] if interval else []
    rows = []
    for m in modules:
        score = "-" if m.score is None else f"{m.score:.1f}%"
        name = m.path.removeprefix("pytest_unitablate/")
        rows.append([f"`{name}`" if markdown else name, str(m.total), str(m.killed),
                     str(m.survived), str(m.no_tests), str(m.unchecked), score])
        if interval:
            low, high = wilson(m.killed, m.checked)
            rows[-1].append("-" if m.score is None else f"{low:.0f}-{high:.0f}%")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--only", action="append", default=[], metavar="GLOB")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--survivors", action="store_true", help="list every survivor")
    parser.add_argument("--kinds", action="store_true",
                        help="count the survivors by the kind of change, over all modules")
    parser.add_argument("--min", type=float, default=None, metavar="SCORE",
                        help="exit 1 when a fully checked module scores below SCORE")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="print the names of N random unchecked mutants per module")
    parser.add_argument("--seed", type=int, default=32, help="the seed of --sample")
    parser.add_argument("--names", type=Path, default=None, metavar="FILE",
                        help="score only the mutants named in FILE, with 95%% intervals")
    args = parser.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"{args.mutants}: no such folder; run `make mutate` first", file=sys.stderr)
        return 2
    if args.sample is not None:
        print(" ".join(sample(args.mutants, args.only, args.sample, args.seed)))
        return 0
    names = None if args.names is None else set(args.names.read_text("utf-8").split())
    modules = read(args.mutants, args.only, names)
    print(table(modules, args.markdown, interval=names is not None))
    if args.survivors:
        for m in modules:
            for name in m.survivors:
                print(name)
    if args.kinds:
        total: Counter[str] = Counter()
        for m in modules:
            total += survivor_kinds(args.mutants, m)
        for kind, count in total.most_common():
            print(f"{count:6d}  {kind}")
    low = [m for m in modules if m.unchecked == 0 and m.score is not None
           and args.min is not None and m.score < args.min]
    for m in low:
        print(f"{m.path}: {m.score:.1f}% is below {args.min:g}%", file=sys.stderr)
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
