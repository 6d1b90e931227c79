"""The ``publish`` verb: a results set as a Hugging Face Hub dataset.

``bench publish RESULTS... --hub ORG/NAME [--private] [--revision BRANCH]``
pushes, in one commit of the dataset repository ``ORG/NAME`` (created if it
does not exist, ``--private`` then; a ``--revision`` branch is made from
``main`` when missing):

- ``README.md``: the dataset card, YAML metadata (pretty name, tags, the
  ``configs`` entry that points the hub's dataset viewer at the table) and
  the Markdown report of ``bench report``;
- ``data/results.parquet`` and ``data/results.jsonl``: the flat table of
  ``bench.report.columnar``, one row per record;
- ``records/<gpu>/<matrix>/<cell_id>.json``: every record file as it is on
  disk, beside its folder's ``machine.json`` and the allocator snapshot a
  record names (``bench run --memory-snapshot``), so that ``bench report
  records/`` on a clone renders the same report.

The hub client's own rules apply (``huggingface_hub``): the token from
``HF_TOKEN`` or ``hf auth login``, ``HF_ENDPOINT`` for another hub. No
token, a refused token (401), no write access (403), the hub unreachable:
one ``error:`` line each, before or instead of a partial push (the commit is
one request: it lands whole or not at all).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from bench import hub
from bench.errors import UserError
from bench.limits import short
from bench.report.cli import sound_records

TABLE = "data/results.parquet"
LINES = "data/results.jsonl"
RECORDS = "records"
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
"""A branch name the hub takes (no spaces, no ``..``; checked again by the hub)."""


def _part(value: Any) -> str:
    """A path component from a record field (anything else than a plain name becomes ``_``)."""
    text = str(value) if value is not None else "_"
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) else "_"


def card(records: list[dict[str, Any]], repo_id: str, title: str | None) -> str:
    """The dataset card: YAML metadata, then the Markdown report and what each file holds."""
    from bench.report import render

    name = title or f"bench results: {repo_id.split('/', 1)[1]}"
    meta = {
        "pretty_name": name,
        "tags": ["bench", "gpu-memory", "benchmark", "fine-tuning"],
        "size_categories": ["n<1K"] if len(records) < 1000 else ["1K<n<10K"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": TABLE}]}],
    }
    report = render(records, "md", title=name)
    files = (
        "## Files\n\n"
        f"- `{TABLE}` and `{LINES}`: one row per record, nested fields as dotted columns "
        "(`cell.model`, `measured.peak_nvml_process_bytes`, `predicted.peak_bytes`), raw units "
        "(bytes, seconds); `pandas.read_parquet` / `pandas.read_json(..., lines=True)`.\n"
        f"- `{RECORDS}/<gpu>/<matrix>/<cell_id>.json`: the records as `bench run` wrote them, "
        f"with each machine's `machine.json`; `bench report {RECORDS}` renders this report again.\n"
    )
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{report.rstrip()}\n\n{files}"


def files(found: list[tuple[Path, dict[str, Any]]], repo_id: str, title: str | None = None) -> dict[str, bytes]:
    """Every file of the dataset, by its path in the repository."""
    from bench.report import columnar

    records = [rec for _, rec in found]
    out: dict[str, bytes] = {
        "README.md": card(records, repo_id, title).encode(),
        TABLE: columnar.to_bytes(records, "parquet"),
        LINES: columnar.to_bytes(records, "jsonl"),
    }
    for path, rec in found:
        folder = f"{RECORDS}/{_part(rec['cell'].get('gpu'))}/{_part(rec.get('matrix'))}"
        name = f"{folder}/{_part(rec['cell_id'])}.json"
        data = path.read_bytes()
        if out.get(name, data) != data:
            raise UserError(f"publish: two different records would be {name} ({path}); give one result set")
        out[name] = data
        snapshot = (rec.get("measured") or {}).get("memory_snapshot")
        if isinstance(snapshot, str) and _part(snapshot) == snapshot and (path.parent / snapshot).is_file():
            out[f"{folder}/{snapshot}"] = (path.parent / snapshot).read_bytes()  # the allocator history it names
        machine = path.parent.parent / "machine.json"
        if machine.is_file():
            out.setdefault(f"{RECORDS}/{_part(rec['cell'].get('gpu'))}/machine.json", machine.read_bytes())
    return out


def _token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise UserError("publish: no Hugging Face token; set HF_TOKEN or log in (hf auth login) with a write token")
    return token


def _why(e: Exception, endpoint: str, repo_id: str) -> str:
    """One line for a failed push."""
    from huggingface_hub import errors as hf

    where = f"publish to {endpoint}/datasets/{repo_id}"
    if isinstance(e, hf.HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status == 401:
            return f"{where}: the hub refused the token (HTTP 401); set HF_TOKEN to a valid write token"
        if status == 403:
            return (
                f"{where}: the token may not write there (HTTP 403); use a token with write access "
                f"to {repo_id.split('/')[0]!r}"
            )
        message = (e.server_message or str(e)).strip().splitlines()
        return f"{where}: the hub answered HTTP {status} ({message[0] if message else 'no message'})"
    if isinstance(e, ValueError):  # the client's own checks (the card's metadata, a response it cannot read)
        lines = str(e).strip().splitlines()
        return f"{where}: {' '.join(lines[:2]) if lines else type(e).__name__}"
    return f"{where}: the hub cannot be reached ({type(e).__name__}); check the network and HF_ENDPOINT"


def _check_access() -> str:
    """The token to push with; a ``UserError`` when offline or without one (before any request)."""
    if hub._offline():
        raise UserError("publish: offline mode is on (HF_HUB_OFFLINE); publishing needs the hub")
    return _token()


def push(
    content: dict[str, bytes], repo_id: str, private: bool = False, revision: str | None = None, message: str = ""
) -> str:
    """Create the dataset repository if needed and commit ``content`` to it; the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    try:  # the HTTP library of huggingface_hub: httpx2 from 2.x, httpx before
        import httpx2 as http
    except ImportError:
        import httpx as http  # type: ignore[no-redef]

    token = _check_access()
    endpoint = (os.environ.get("HF_ENDPOINT") or hub.DEFAULT_ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in sorted(content.items())]
        info = api.create_commit(
            repo_id,
            operations=ops,
            commit_message=message or f"bench publish: {len(content)} files",
            repo_type="dataset",
            revision=revision,
        )
    except (OSError, ValueError, http.HTTPError) as e:  # HfHubHTTPError is both an OSError and an HTTPError
        raise UserError(_why(e, endpoint, repo_id)) from None
    return str(info.commit_url)


def cmd_publish(args: argparse.Namespace) -> int:
    if not hub.REPO_ID.fullmatch(args.hub):
        raise UserError(f"--hub: {short(args.hub)} is not allowed; allowed: ORG/NAME (a hub repository id)")
    if args.revision is not None and (not REVISION.fullmatch(args.revision) or ".." in args.revision):
        raise UserError(f"--revision: {short(args.revision)} is not allowed; allowed: a branch name such as v1")
    _check_access()  # before the records are read and the table is built
    found = sound_records(args.results, "publish")
    content = files(found, args.hub, args.title)
    message = args.message or f"bench publish: {len(found)} records"
    url = push(content, args.hub, private=args.private, revision=args.revision, message=message)
    print(f"published {len(found)} records to {args.hub} ({len(content)} files): {url}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``publish`` to the ``bench`` command line."""
    p = subparsers.add_parser(
        "publish",
        help="push results as a Hugging Face Hub dataset",
        description="Push the records under RESULTS to the Hugging Face Hub dataset ORG/NAME in one commit "
        "(the repository is created if missing): README.md (a dataset card: YAML metadata and the Markdown "
        f"report), {TABLE} and {LINES} (one row per record) and the record files under {RECORDS}/. "
        "The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another hub.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="result folders or record files")
    p.add_argument("--hub", required=True, metavar="ORG/NAME", help="the dataset repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="commit to this branch (made from main if missing) [main]")
    p.add_argument("--title", help="the dataset's name and the report's heading [default: bench results: NAME]")
    p.add_argument("--message", help="the commit message [default: bench publish: N records]")
    p.set_defaults(func=cmd_publish)
