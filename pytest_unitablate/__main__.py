"""Command line: ``python -m pytest_unitablate discover ...`` (or the ``unitablate`` script).

Example::

    python -m pytest_unitablate discover --model pkg.models:load --data pkg.data:test \\
        --layer layer4 --out specs/starter.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_unitablate")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="scan layers and write a starter spec with recorded "
                       "thresholds")
    d.add_argument("--model", required=True, help="package.module:callable returning the model")
    d.add_argument("--data", required=True, help="package.module:callable returning the data")
    d.add_argument("--layer", action="append", required=True, help="layer to scan (repeatable)")
    d.add_argument("--classes", default=None, help="comma-separated class names")
    d.add_argument("--top", type=int, default=5, help="named-unit checks to write (default 5)")
    d.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    d.add_argument("--out", type=Path, required=True, help="spec file to write")
    d.add_argument("--force", action="store_true", help="replace an existing file")
    d.add_argument("--identity", action="store_true", help="protect the named units by "
                   "their signatures (identity: signature; writes <out>.signatures.json)")
    s = sub.add_parser("signatures", help="print a signatures sidecar as a table")
    s.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "signatures":
        from pytest_unitablate.spec.signatures import (
            SignatureFileError,
            Signatures,
            format_table,
        )

        try:
            print(format_table(Signatures.from_text(args.file.read_text(), str(args.file))))
        except (OSError, SignatureFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from pytest_unitablate.analysis.discover import discover
    from pytest_unitablate.errors import UnitAblateError

    classes = args.classes.split(",") if args.classes else None
    try:
        text = discover(args.model, args.data, args.layer, args.out, classes=classes,
                        top=args.top, level=args.confidence, overwrite=args.force,
                        identity=args.identity)
    except (UnitAblateError, FileExistsError, ValueError, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checks = text.count("  - layer:")
    print(f"wrote {args.out} with {checks} checks; run: pytest --unitablate-spec {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
