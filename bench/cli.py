"""The ``bench`` command line: ``main`` reads as a pipeline of verbs.

Each verb lives with its concept and registers its own sub-parser
(``register(subparsers)``, setting ``func``): ``validate`` here,
``predict``/``plan`` in ``bench.predict.cli``, ``run`` in ``bench.run.cli``,
``report``/``compare`` in ``bench.report.cli``, ``serve`` in ``bench.serve.cli``. A ``UserError`` becomes
``error: <line>`` per problem and exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import __version__, clihelp
from bench.errors import UserError

VERB_MODULES = (
    "bench.predict.cli",
    "bench.run.cli",
    "bench.report.cli",
    "bench.publish",
    "bench.listing",
    "bench.serve.cli",
)


def cmd_validate(args: argparse.Namespace) -> int:
    from bench import matrix

    m = matrix.load(args.matrix, args.overrides)
    print(f"{m.path}: valid, {len(m.cells)} cells for {m.gpu} (results/{m.gpu}/{m.name}/)")
    return 0


DESCRIPTION = """\
Will model M, trained with method X at precision P and batch B, fit on GPU G, and how
fast will it go? bench predicts the peak GPU memory (a breakdown whose parts add up)
and the step time of such a cell without a GPU, and measures cells for real on one.

Start with: bench predict --model llama-3.1-8b --method lora --precision bf16 --gpu all
Each command's options, allowed values and defaults: bench COMMAND --help"""


def build_parser() -> argparse.ArgumentParser:
    parser = clihelp.Parser(prog="bench", description=DESCRIPTION, formatter_class=clihelp.Formatter)
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "validate",
        help="check a matrix file and count its cells",
        description="Check every cell of a matrix (all problems at once) and count its cells; no GPU, no trace.",
    )
    p.add_argument("matrix", help="matrix YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=clihelp.overrides_help())
    p.set_defaults(func=cmd_validate)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    clihelp.finish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        clihelp.unrecognized(parser, args.command, extra)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        for line in e.problems or [str(e)]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
