"""The ``serve`` verb: ``bench serve [--host 127.0.0.1] [--port 8000] [--results DIR ...] [--root-path /prefix]``.

Starts the calculator's web server (``bench.serve.app``, run by uvicorn in
one process) and keeps the predictor warm: torch, transformers and the
predictor are imported before the first request, and traces stay cached in
memory (and on disk where the trace cache folder is writable). Where it is
not (a read-only home, a locked-down account) the cache moves to a
temporary folder, or stays in memory only; the server writes nothing else
but uploads, which go to a temporary folder too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.errors import UserError


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (made if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bench-serve-probe-"):
            return True
    except OSError:
        return False


def trace_cache_folder() -> str:
    """Make sure the trace cache can be written, or move it (``BENCH_CACHE_DIR``); say where it is."""
    from bench.predict import trace_cache

    folder = trace_cache.folder()
    if folder is None:
        return "off (traces cached in memory only)"
    if _writable(folder):
        return str(folder)
    try:
        tmp = tempfile.mkdtemp(prefix="bench-serve-traces-")
    except OSError:
        os.environ["BENCH_CACHE_DIR"] = "off"
        return f"off: {folder} and the temporary folder are not writable (traces cached in memory only)"
    os.environ["BENCH_CACHE_DIR"] = tmp
    return f"{tmp} ({folder} is not writable)"


def warm_up() -> None:
    """Import what every prediction needs, so the first request pays no import."""
    import bench.predict.cli  # noqa: F401
    import bench.predict.ranking  # noqa: F401
    from bench.predict import predict  # noqa: F401  (the tracer, torch and transformers)


def cmd_serve(a: argparse.Namespace) -> int:
    from bench import store

    for folder in a.results:
        if not Path(folder).is_dir():
            raise UserError(f"--results: {folder!r} is not a folder; allowed: a folder of bench run records")
        if not list(store.record_files([folder])):
            raise UserError(f"--results: {folder!r} holds no result records; run `bench run MATRIX` first")
    if not 0 < a.port < 65536:
        raise UserError(f"--port: {a.port} is not allowed; allowed: 1 to 65535")
    if a.root_path and not a.root_path.startswith("/"):
        raise UserError(f"--root-path: {a.root_path!r} is not allowed; allowed: a path such as /bench")
    import uvicorn

    from bench.serve.app import Prefixed, create_app

    cache = trace_cache_folder()
    warm_up()
    app = create_app(a.results)
    root = a.root_path.rstrip("/")
    print(f"bench serve: http://{a.host}:{a.port}{root}/  (trace cache: {cache})", file=sys.stderr, flush=True)
    uvicorn.run(Prefixed(app), host=a.host, port=a.port, root_path=root, log_level="warning", workers=1)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web calculator: the predictor warm behind a page and a JSON API",
        description="Serve a local web calculator: a page and a JSON API over the predictor, kept warm "
        "(torch, transformers and traces stay loaded), so an answer does not pay a fresh process's imports.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    p.add_argument("--port", type=int, default=8000, help="port [8000]")
    p.add_argument(
        "--results", action="append", default=[], metavar="DIR", help="results folder whose report the page shows"
    )
    p.add_argument(
        "--root-path",
        default="",
        metavar="/PREFIX",
        help="the path a reverse proxy serves it under [default: none, served at /]",
    )
    p.set_defaults(func=cmd_serve)
