"""A loopback stand-in for the Hugging Face Hub's file resolver, for tests.

Serves ``HEAD`` and ``GET /{owner}/{name}/resolve/{revision}/{file}`` with the
headers ``huggingface_hub.file_download.get_hf_file_metadata`` reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``) and the hub's error
convention for the rest: ``X-Error-Code: GatedRepo`` (401), ``RepoNotFound``
(404, or 401 for a private repository asked without the right token) and
``EntryNotFound`` (404). Every request path is recorded, so a test can check
that only ``config.json`` was asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hub:
    """``Hub(repos, gated=(...), private={repo: token})``; ``url`` while started."""

    def __init__(self, repos: dict[str, dict], gated=(), private: dict[str, str] | None = None):
        self.repos = {k: json.dumps(v).encode() for k, v in repos.items()}
        self.gated = set(gated)
        self.private = dict(private or {})
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Hub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                auth = self.headers.get("Authorization")
                hub.requests.append((self.command, self.path, auth))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo in hub.gated:
                    return self._error(401, "GatedRepo")
                if repo in hub.private and auth != f"Bearer {hub.private[repo]}":
                    return self._error(401, "RepoNotFound")
                if repo not in hub.repos:
                    return self._error(404, "RepoNotFound")
                if filename != "config.json":
                    return self._error(404, "EntryNotFound")
                data = hub.repos[repo]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", hashlib.sha1(repo.encode()).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
