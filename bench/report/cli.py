"""The ``report`` and ``compare`` verbs (never import torch: they only read files).

``bench report RESULTS... [-o FILE] [--format md|html|csv|parquet|jsonl] [--title TEXT]``
renders every record under the given folders or files; without ``-o`` the
text goes to standard output. The format comes from ``--format``, else from
the suffix of ``-o``, else Markdown. Parquet and JSON Lines are the flat
table of ``bench.report.columnar`` (one row per record, for pandas).
Predictions made by another predictor version are predicted afresh first
(``--no-repredict``: shown, marked stale).

``bench compare A B [--threshold peak=5%,throughput=5%] [--all]`` prints the
cells whose peak or throughput changed past a threshold (all with ``--all``)
and a summary line; exit 1 when a cell regressed, 0 otherwise. Throughput is
judged only from ``--min-steps`` measured steps on both sides, and only past
the noise of their step times.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench import destination, recordshape, store
from bench.errors import UserError
from bench.report import columnar, compare as comparemod, freshness
from bench.report.render import render

MAX_WARNINGS = 20
"""Skipped records named one by one; past this many, one line counts the rest."""


def sound_records(paths: list[str], what: str) -> list[tuple[Path, dict]]:
    """``(file, record)`` of every sound record under ``paths``; each unsound one is left out with one
    warning line; none at all is a ``UserError`` naming ``what`` asked for them."""
    found, skipped = [], []
    for path in store.record_files(paths):
        rec = store.load_record(path)
        bad = recordshape.problems(rec)
        if bad:
            skipped.append(
                f"warning: {path}: left out: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            )
        else:
            found.append((path, rec))
    for line in skipped[:MAX_WARNINGS]:
        print(line, file=sys.stderr)
    if len(skipped) > MAX_WARNINGS:
        print(f"warning: {len(skipped) - MAX_WARNINGS} more records left out", file=sys.stderr)
    if not found:
        raise UserError(f"{what}: no result records under {', '.join(paths)}; run `bench run MATRIX` first")
    return found


def records(paths: list[str], what: str) -> list[dict]:
    """The sound records under ``paths`` (``sound_records`` without the files)."""
    return [rec for _, rec in sound_records(paths, what)]


def cmd_report(args: argparse.Namespace) -> int:
    fmt = columnar.format_of(args.output, args.format)
    if args.output is not None:
        destination.check_file(args.output)
    elif fmt == "parquet":
        raise UserError("--format parquet: a binary file, not for the terminal; allowed: with -o FILE.parquet")
    found = freshness.refresh(records(args.results, "report"), repredict=args.repredict)
    if fmt in columnar.FORMATS:
        data = columnar.to_bytes(found, fmt)
        if args.output is None:
            sys.stdout.write(data.decode())
            return 0
        print(f"wrote {destination.write_bytes(args.output, data)} ({fmt})", file=sys.stderr)
        return 0
    text = render(found, fmt, title=args.title)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    out = destination.write_text(args.output, text)
    print(f"wrote {out} ({fmt})", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    thresholds = comparemod.parse_thresholds(args.threshold)
    if args.min_steps < 1:
        raise UserError(f"--min-steps: {args.min_steps} is not allowed; allowed: an integer >= 1")
    thresholds = dataclasses.replace(thresholds, min_steps=args.min_steps)
    changes = comparemod.compare(records([args.a], "A"), records([args.b], "B"), thresholds)
    sys.stdout.write(comparemod.render(changes, thresholds, show_all=args.all))
    return 1 if comparemod.regressed(changes) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``compare`` to the ``bench`` command line."""
    p = subparsers.add_parser(
        "report", help="tables and plots of results (Markdown, HTML, CSV)", description=__doc__.split("\n\n")[1]
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="result folders or record files")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of standard output [default: standard output]"
    )
    p.add_argument(
        "--format", choices=columnar.ALL_FORMATS, help="md, html, csv, parquet or jsonl [from -o's suffix, else md]"
    )
    p.add_argument("--title", help='heading of the report [default: none in Markdown; "bench report" in HTML]')
    p.add_argument(
        "--no-repredict",
        dest="repredict",
        action="store_false",
        help="keep predictions made by another predictor version, marked stale [predict them afresh]",
    )
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "compare",
        help="compare two result sets cell by cell; exit 1 on a regression",
        description=__doc__.split("\n\n")[2],
    )
    p.add_argument("a", metavar="A", help="baseline results (folder or record file)")
    p.add_argument("b", metavar="B", help="new results (folder or record file)")
    p.add_argument(
        "--threshold",
        metavar="SPEC",
        default=None,
        help="allowed rise of the peak and fall of tokens/s before a cell counts as worse "
        f"[{comparemod.THRESHOLD_FORM.replace('%', '%%')}]",
    )
    p.add_argument(
        "--min-steps",
        type=int,
        default=comparemod.MIN_STEPS,
        metavar="N",
        help=f"measured steps both sides need before a throughput change counts [{comparemod.MIN_STEPS}]",
    )
    p.add_argument("--all", action="store_true", help="list unchanged cells too")
    p.set_defaults(func=cmd_compare)
