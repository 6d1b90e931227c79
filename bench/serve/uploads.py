"""The files a browser sends to ``bench serve``, and the only paths the server reads.

A cell names a model config, a DeepSpeed JSON or a job file by path; on the
command line that is the user's file, but a server must not read whatever
path a request names. So a file comes in as text (``add``), is written once
into a private temporary folder under a content hash (the same file twice is
one path, and ``bench.cell.cell_id`` hashes the content anyway), and a cell
field may name a path only if it is one of these (``check``). Error messages
quote the name the user gave, not the server's path (``readable``).

The folder is the system's temporary folder: a server with no write access
anywhere else still takes uploads; where even that is refused, an upload is
one error line and everything else works.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
from pathlib import Path

from bench.errors import UserError
from bench.limits import short

KINDS = ("model", "ds_config", "from")
"""The cell fields that name a file: a model's config.json, a DeepSpeed JSON, a job file (``--from``)."""
MAX_BYTES = 1 << 20
"""Largest upload: configs and job files are a few kB; a MiB is generous and bounds the folder."""
MAX_FILES = 1000
"""Uploads kept per server process (each at most ``MAX_BYTES``)."""


def _safe_name(name: str, kind: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(name)).name).strip(".-")[:80] or kind
    if kind != "from" and not stem.endswith(".json"):
        stem += ".json"
    return stem


class Uploads:
    """Uploaded files by server path, with the names their senders gave them."""

    def __init__(self, root: Path | None = None):
        self._root = root
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def _folder(self) -> Path:
        if self._root is None:
            try:
                self._root = Path(tempfile.mkdtemp(prefix="bench-serve-uploads-"))
            except OSError as e:
                raise UserError(f"upload: the server cannot write its temporary folder ({e.strerror})") from None
        return self._root

    def add(self, kind: object, name: object, text: object) -> str:
        """Store ``text`` sent as file ``name`` for cell field ``kind``; the path a cell may name."""
        if not isinstance(kind, str) or kind not in KINDS:
            raise UserError(f"kind: {short(kind)} is not allowed; allowed: {', '.join(KINDS)}")
        if not isinstance(text, str) or not isinstance(name, str):
            raise UserError(f"{kind}: the upload needs a file name and its text")
        data = text.encode("utf-8")
        if len(data) > MAX_BYTES:
            raise UserError(f"{kind}: {name!r} is {len(data):,} bytes; allowed: at most {MAX_BYTES:,} bytes")
        if kind != "from":
            try:
                json.loads(text)
            except ValueError as e:
                raise UserError(f"{kind}: {name!r} is not JSON ({e}); allowed: a JSON file") from None
        digest = hashlib.sha256(data).hexdigest()[:16]
        stem = _safe_name(name, kind)
        with self._lock:
            if len(self._names) >= MAX_FILES:
                raise UserError(f"{kind}: the server holds {MAX_FILES} uploads already; restart it to clear them")
            folder = self._folder() / digest
            if stem == "config.json" and kind == "model":  # a folder name labels the model: bench.cell.model_label
                doc = json.loads(text)
                label = doc.get("model_type") if isinstance(doc, dict) else None
                folder = folder / _safe_name(str(label or "model"), "from")
            path = folder / stem
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as e:
                raise UserError(f"{kind}: the server cannot store the upload ({e.strerror})") from None
            self._names[str(path)] = str(name)
        return str(path)

    def is_upload(self, value: object) -> bool:
        return isinstance(value, str) and value in self._names

    def name_of(self, path: str) -> str:
        """The name the sender gave ``path`` (``path`` itself when it is no upload)."""
        return self._names.get(path, path)

    def readable(self, message: str) -> str:
        """``message`` with every upload's server path replaced by the name its sender gave it."""
        for path, name in self._names.items():
            if path in message:
                message = message.replace(path, name)
        return message
