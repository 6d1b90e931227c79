"""The routes of ``bench serve`` (a Starlette app): the page, the catalogs, the predictor, the results.

JSON API (every path below is relative to ``--root-path``):

- ``GET  /api/models[?q=PATTERN]``: the model catalog, as ``bench models --json [PATTERN]``.
- ``GET  /api/gpus``: the GPU catalog (name, marketing name, memory, bf16, USD per hour).
- ``GET  /api/options``: the allowed methods, precisions, tasks, optimizers, attention kernels and the defaults.
- ``POST /api/predict[?tokens=N&max_batch=1]``: body a JSON object of cell fields, as in a matrix
  cell (``model``, ``method``, ``precision``, ``batch``, ``seq``, ``grad_accum``, ``grad_ckpt``,
  ``gpu``, ``gpus``, ``ds_config``, ``from``, ...); answer the cell's entry of ``bench plan --json``
  (``label``, ``cell_id``, ``cell``, ``predicted``; ``error`` instead of ``predicted`` with status
  422 where the predictor refuses the cell).
- ``POST /api/cards[?tokens=N&max_batch=1]``: the same body; one row per catalog card as
  ``bench predict --gpu all --tokens N --json [--max-batch]`` prints them, cheapest first
  (without ``tokens``: the same rows, smallest fitting card first) (``gpu``, ``capacity_bytes``,
  ``fits``, ``predicted``, ``max_batch``; ``error`` for a card without the precision).
- ``POST /api/command``: the same body; ``{"cell_id", "command", "matrix_yaml"}`` to copy.
- ``POST /api/upload``: ``{"kind": "model" | "ds_config" | "from", "name": FILE, "text": CONTENT}``;
  answer ``{"path", "name"}``: the value to put in that cell field (and, for a job file,
  ``fields``: the cell fields it sets). The server reads no other path.
- ``GET  /api/status``: ``busy`` (``tracing``/``predicting`` what, for how many seconds) or null,
  the models traced so far, and where traces are cached (``trace_cache``: a folder or ``off``).
- ``GET  /results``, ``GET /results/N``: the results folders given at start, and the HTML report
  of folder ``N`` (``bench report DIR --format html``).

Bad input is status 400 and ``{"errors": [{"key": FIELD, "message": LINE}]}``: the lines the CLI
prints after ``error:``, each with the field it names.
"""

from __future__ import annotations

import os
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from bench import cell as cellmod, gpus, optimizer_names
from bench.errors import UserError
from bench.serve import equivalent
from bench.serve.calculator import Calculator, FieldError, Options, field_errors

MAX_BODY = 2 << 20
"""Largest request body: an upload (``uploads.MAX_BYTES``) as JSON text, with room for escapes."""


def _bad(errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=400)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise FieldError([{"key": "", "message": f"request: {len(raw):,} bytes; allowed: at most {MAX_BODY:,}"}])
    try:
        import json

        return json.loads(raw or b"null")
    except ValueError as e:
        raise FieldError(
            [{"key": "", "message": f"request: the body is not JSON ({e}); allowed: a JSON object"}]
        ) from None


def _options(request: Request) -> Options:
    try:
        return Options.parse(dict(request.query_params))
    except UserError as e:
        raise FieldError(field_errors(e)) from None


def page_html(root_path: str) -> str:
    """The page, its ``<base>`` set to the mount point so that relative API paths work behind a proxy."""
    text = (resources.files("bench.serve") / "page.html").read_text(encoding="utf-8")
    return text.replace("<!--BASE-->", f'<base href="{escape(root_path.rstrip("/"), quote=True)}/">', 1)


class Prefixed:
    """The app under ``--root-path`` both behind a proxy that strips the prefix and asked for directly.

    uvicorn puts the root path before every request path and Starlette routes on what follows it,
    so ``/api/status`` works as a stripping proxy forwards it; ``/prefix/api/status`` (no proxy, or
    one that keeps the prefix) would route as ``/prefix/api/status`` and is mapped to the same route.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "")
        if root and scope["type"] == "http":
            path = scope["path"]
            rest = path[len(root) :] if path.startswith(root) else path
            if rest == root or rest.startswith(root + "/"):
                scope = dict(scope, path=root + rest[len(root) :])
        await self.app(scope, receive, send)


def create_app(results: list[str] | None = None, calculator: Calculator | None = None) -> Starlette:
    """The ASGI app; ``results``: folders whose report the page links to."""
    calc = calculator or Calculator()
    folders = [str(Path(r)) for r in results or []]
    reports: dict[int, tuple[tuple, str]] = {}  # folder index -> (its records' mtimes, the rendered page)

    def guarded(handler):
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except FieldError as e:
                return _bad(e.errors)
            except UserError as e:
                return _bad(field_errors(e, calc.uploads))

        return route

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html(request.scope.get("root_path", "")))

    async def models(request: Request) -> Response:
        from bench import listing

        pattern = request.query_params.get("q") or None
        return JSONResponse(await run_in_threadpool(listing.rows, pattern))

    async def gpu_list(request: Request) -> Response:
        out = []
        for name in gpus.names():
            g = gpus.resolve(name)
            out.append(
                {
                    "name": g.name,
                    "marketing_name": g.marketing_name,
                    "memory_bytes": g.memory_bytes,
                    "bf16": g.bf16,
                    "usd_per_hour": g.usd_per_hour,
                }
            )
        return JSONResponse(out)

    async def options(request: Request) -> Response:
        defaults = {k: v for k, v in cellmod.Cell(model="", gpu="").to_dict().items() if k not in ("model", "gpu")}
        return JSONResponse(
            {
                "methods": list(cellmod.METHODS),
                "precisions": list(cellmod.PRECISIONS),
                "tasks": list(cellmod.TASKS),
                "optimizers": list(optimizer_names.BENCH_NAMES),
                "attns": list(cellmod.ATTNS),
                "defaults": {**defaults, "method": "full"},
                "results": [{"index": i, "name": Path(f).name or f} for i, f in enumerate(folders)],
            }
        )

    async def predict(request: Request) -> Response:
        fields, opts = await _body(request), _options(request)
        entry = await run_in_threadpool(calc.predict, fields, opts)
        if "error" in entry:
            entry["error"] = calc.uploads.readable(entry["error"])
        return JSONResponse(entry, status_code=422 if "error" in entry else 200)

    async def cards(request: Request) -> Response:
        fields, opts = await _body(request), _options(request)
        return JSONResponse(await run_in_threadpool(calc.cards, fields, opts))

    async def command(request: Request) -> Response:
        fields, opts = await _body(request), _options(request)
        c, _ = await run_in_threadpool(calc.cell_of, fields)
        name = calc.uploads.name_of
        return JSONResponse(
            {
                "cell_id": c.cell_id,
                "command": equivalent.command(c, opts.tokens, name),
                "matrix_yaml": equivalent.matrix_yaml(c, name),
            }
        )

    async def upload(request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise FieldError([{"key": "", "message": "upload: allowed: a JSON object with kind, name and text"}])
        kind = body.get("kind")
        key = kind if isinstance(kind, str) else "kind"
        try:
            path = calc.uploads.add(kind, body.get("name"), body.get("text"))
            out: dict[str, Any] = {"path": path, "name": calc.uploads.name_of(path)}
            if kind == "model":
                from bench import models

                await run_in_threadpool(models.resolve, path)  # a bad config is said now, beside its field
            if kind == "from":
                from bench import jobfile

                job = await run_in_threadpool(jobfile.load, Path(path))
                fields = dict(job.fields)
                if any(k in fields for k in ("tuning", "strategy", "offload")):
                    triple = [
                        fields.pop(k, d) for k, d in (("tuning", "full"), ("strategy", "none"), ("offload", "none"))
                    ]
                    fields["method"] = cellmod.method_name(*triple)
                if isinstance(fields.get("model"), str):
                    fields["model"] = calc.uploads.name_of(fields["model"])
                out["fields"] = fields
                out["notes"] = [calc.uploads.readable(n) for n in job.notes]
        except UserError as e:
            raise FieldError(
                field_errors(e, calc.uploads, key if key in ("model", "ds_config", "from") else None)
            ) from None
        return JSONResponse(out)

    async def status(request: Request) -> Response:
        from bench.predict import trace_cache

        folder = trace_cache.folder()
        return JSONResponse({**calc.status(), "trace_cache": str(folder) if folder else "off"})

    async def results_index(request: Request) -> Response:
        items = (
            "".join(f'<li><a href="results/{i}">{escape(f)}</a></li>' for i, f in enumerate(folders))
            or "<li>none: start the server with --results DIR</li>"
        )
        base = escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        return HTMLResponse(
            f'<!DOCTYPE html><html><head><base href="{base}/"><title>results</title></head>'
            f"<body><h1>Results</h1><ul>{items}</ul></body></html>"
        )

    async def results_report(request: Request) -> Response:
        try:
            index = int(request.path_params["index"])
            folder = folders[index]
        except (ValueError, IndexError):
            return HTMLResponse("<p>No such results folder.</p>", status_code=404)
        from bench import store
        from bench.report.cli import records
        from bench.report.render import render

        def make() -> str:
            files = sorted(store.record_files([folder]))
            stamp = tuple((str(f), os.stat(f).st_mtime_ns) for f in files)  # a record rewritten: a new report
            cached = reports.get(index)
            if cached is None or cached[0] != stamp:
                reports[index] = (stamp, render(records([folder], "results"), "html", title=f"bench report: {folder}"))
            return reports[index][1]

        try:
            return HTMLResponse(await run_in_threadpool(make))
        except UserError as e:
            return HTMLResponse(f"<p>{escape(str(e))}</p>", status_code=404)

    routes = [
        Route("/", page),
        Route("/api/models", guarded(models)),
        Route("/api/gpus", guarded(gpu_list)),
        Route("/api/options", guarded(options)),
        Route("/api/predict", guarded(predict), methods=["POST"]),
        Route("/api/cards", guarded(cards), methods=["POST"]),
        Route("/api/command", guarded(command), methods=["POST"]),
        Route("/api/upload", guarded(upload), methods=["POST"]),
        Route("/api/status", guarded(status)),
        Route("/results", results_index),
        Route("/results/{index}", results_report),
    ]
    app = Starlette(routes=routes)
    app.state.calculator = calc
    return app
