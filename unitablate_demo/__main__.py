"""``python -m unitablate_demo init [DIR]``: the demo in a folder of your own, from an
installed package (a wheel has no repository around it).

Writes ``DIR/specs/`` (the three demo specs and their signatures sidecars, shipped as
package data) and ``DIR/conftest.py`` (the demo's fixtures, ``unitablate_demo.plugin``),
then prints the commands to run. Existing files are left alone unless ``--force``.

Example::

    python -m unitablate_demo init demo && cd demo
    pytest --unitablate-spec specs/resnet.yaml
    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned   # 2 fail
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

CONFTEST = '''"""The digits demo's fixtures (written by python -m unitablate_demo init)."""

from unitablate_demo.plugin import *  # noqa: F403
'''


def init(folder: Path, force: bool = False) -> list[Path]:
    """Write the demo's specs and conftest into ``folder``; return the files written."""
    written: list[Path] = []
    targets = {folder / "conftest.py": CONFTEST}
    shipped = resources.files("unitablate_demo") / "specs"
    for entry in sorted(shipped.iterdir(), key=lambda p: p.name):
        if entry.name.endswith((".yaml", ".json")):
            targets[folder / "specs" / entry.name] = entry.read_text(encoding="utf-8")
    clash = [p for p in targets if p.exists()]
    if clash and not force:
        raise FileExistsError(f"{clash[0]} exists (use --force to replace the demo files)")
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unitablate_demo",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write the demo specs and conftest.py into a folder")
    p.add_argument("folder", nargs="?", type=Path, default=Path("."))
    p.add_argument("--force", action="store_true", help="replace existing demo files")
    args = parser.parse_args(argv)
    try:
        written = init(args.folder, args.force)
    except FileExistsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 4
    for path in written:
        print(f"wrote {path}")
    where = "" if args.folder == Path(".") else f"cd {args.folder} && "
    print(f"\n{where}pytest --unitablate-spec specs/resnet.yaml\n"
          f"{where}pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint "
          f"resnet-finetuned   # a fine-tune that breaks two protected units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
