"""``python -m rome_lib.checks grade SUBMISSIONS/ [--out grades.csv] [--time-limit 600]``: run each
learner's exercise notebooks and write one CSV row per learner (see :mod:`rome_lib.checks.grade`).

Bad input exits with status 2 and one line on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .grade import grade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rome_lib.checks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="run the learners' exercise notebooks and grade their checks")
    g.add_argument("submissions", type=Path, help="one folder or one .ipynb per learner")
    g.add_argument("--out", type=Path, help="the CSV to write (default: SUBMISSIONS/grades.csv)")
    g.add_argument("--time-limit", type=float, default=600, help="seconds per notebook (default 600)")
    args = parser.parse_args(argv)
    if args.time_limit <= 0:
        parser.error("--time-limit must be positive")
    try:
        out = grade(args.submissions, args.out, args.time_limit)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
