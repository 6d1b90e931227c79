"""``bench run MATRIX [options] [key=value ...]``: measure a matrix on this machine.

Registers the ``run`` verb with the top-level parser. Importing this module
(and parsing) never imports torch: the parent only schedules children.
"""

from __future__ import annotations

import argparse
import math

from bench import clihelp

EXECUTORS = ("local", "ray")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.errors import UserError
    from bench.run.runner import RunOptions, run

    if args.memory_snapshot and args.executor == "ray":
        raise UserError("--memory-snapshot: the file would stay on the Ray node; allowed: with --executor local")
    executor = None
    if args.executor == "ray":
        from bench.run.ray_executor import RayExecutor

        executor = RayExecutor(address=args.address, require_gpu_type=args.require_gpu_type)
    elif args.address is not None or args.require_gpu_type:
        raise UserError("--address and --require-gpu-type need --executor ray")

    opts = RunOptions(
        matrix=args.matrix,
        overrides=list(args.overrides),
        device=args.device,
        results=args.results,
        retry_failed=args.retry_failed,
        force=args.force,
        find_max_batch=args.find_max_batch,
        skip_predicted_oom=args.skip_predicted_oom,
        emulate_target=args.emulate_target,
        timeout_s=args.timeout,
        executor=args.executor,
        memory_snapshot=args.memory_snapshot,
    )
    return run(opts, executor)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:  # also refuses nan, which compares false and would disable the timeout
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout must be > 0 seconds and finite")
    return value


def _accept_trailing_overrides(parser: argparse.ArgumentParser) -> None:
    """Let ``key=value`` overrides come after the options too.

    argparse fills the ``overrides`` positional from the strings right after
    MATRIX only; ``bench run m.yaml --device cpu batch=4`` would leave
    ``batch=4`` unrecognized. This moves such leftovers into ``overrides``.
    """
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = parse(args, namespace)
        late = [e for e in extras if "=" in e and not e.startswith("-")]
        if late:
            ns.overrides = [*ns.overrides, *late]
        return ns, [e for e in extras if e not in late]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``bench`` command line."""
    p = subparsers.add_parser(
        "run",
        help="measure a matrix's cells on this machine, one child process per cell",
        description="Measure every cell of MATRIX in its own child process and write one record per "
        "cell to RESULTS/<gpu>/<matrix>/ as soon as it ends. A re-run resumes "
        "(e.g. `bench run m.yaml --device cpu batch=[1,2]`).",
    )
    p.add_argument("matrix", help="matrix YAML file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=clihelp.overrides_help(),
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="where cells run [cuda when a GPU is found; otherwise give --device cpu]",
    )
    p.add_argument("--results", default="results", metavar="DIR", help="results folder [results]")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun cells whose record is error, timeout or skipped (ok and oom stay)",
    )
    p.add_argument("--force", action="store_true", help="rerun every cell, whatever the store holds")
    p.add_argument(
        "--find-max-batch",
        action="store_true",
        help="per group of cells differing only in batch, bisect for the largest batch that fits",
    )
    p.add_argument(
        "--skip-predicted-oom",
        action="store_true",
        help="record cells the predictor says will not fit as skipped instead of running them",
    )
    p.add_argument(
        "--emulate-target",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a GPU larger than the matrix's target, cap each cell at the target's memory [on]",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=1800.0,
        metavar="SECONDS",
        help="per-cell wall-clock limit; the cell's process group is killed [1800]",
    )
    p.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="CUDA only: dump each cell's allocator history beside its record (<cell_id>.memory.pickle, "
        "for pytorch.org/memory_viz); slows the steps it records",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="how cells are started [local: child processes on this host; "
        "ray: one Ray task per cell on an existing cluster, see docs/ray.md]",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --executor ray: the cluster (auto, HOST:PORT, ray://HOST:10001) [$RAY_ADDRESS, else auto]",
    )
    p.add_argument(
        "--require-gpu-type",
        action="store_true",
        help="with --executor ray: run cells only on nodes whose accelerator_type is the matrix's gpu",
    )
    p.set_defaults(func=cmd_run)
    _accept_trailing_overrides(p)
