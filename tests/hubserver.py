"""A loopback stand-in for the Hugging Face Hub's file resolver, for tests.

Serves ``HEAD`` and ``GET /{owner}/{name}/resolve/{revision}/{file}`` with the
headers ``huggingface_hub.file_download.get_hf_file_metadata`` reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``) and the hub's error
convention for the rest: ``X-Error-Code: GatedRepo`` (401), ``RepoNotFound``
(404, or 401 for a private repository asked without the right token) and
``EntryNotFound`` (404). Every request path is recorded, so a test can check
that only ``config.json`` was asked for.

It also takes pushes, as ``HfApi.create_repo``, ``create_branch`` and
``create_commit`` make them (``huggingface_hub/hf_api.py``, ``_commit_api.py``):
``POST /api/repos/create`` (409 with the repository's ``url`` when it exists),
``/api/validate-yaml`` (the card's metadata must be YAML), and
``/api/{type}s/{owner}/{name}/branch/{branch}``, ``.../preupload/{rev}``
(every file ``regular``: its bytes travel base64 in the commit) and
``.../commit/{rev}`` (the NDJSON body: a ``header`` line, then one ``file``
line per file). Pushing needs a token of ``writers`` (401 without one, 403 for
another token or an owner outside its namespaces); what arrives is kept in
``pushed[(type, repo)][branch][path]`` (bytes), commits in ``commits``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import yaml


class Hub:
    """``Hub(repos, gated=(...), private={repo: token})``; ``url`` while started."""

    def __init__(
        self,
        repos: dict[str, dict] | None = None,
        gated=(),
        private: dict[str, str] | None = None,
        writers: dict[str, list[str]] | None = None,
    ):
        self.repos = {k: json.dumps(v).encode() for k, v in (repos or {}).items()}
        self.gated = set(gated)
        self.private = dict(private or {})
        self.writers = dict(writers or {})
        """token -> the namespaces (users, organisations) it may create repositories in and push to."""
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.pushed: dict[tuple[str, str], dict[str, dict[str, bytes]]] = {}
        self.created: dict[tuple[str, str], dict] = {}  # (type, repo) -> the create request's payload
        self.commits: list[dict] = []  # {"repo", "type", "revision", "header", "paths"}
        self._lock = threading.Lock()
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

            def do_POST(self):
                auth = self.headers.get("Authorization")
                hub.requests.append((self.command, self.path, auth))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
                if parts == ["api", "validate-yaml"]:
                    return self._validate(json.loads(body))
                token = auth.removeprefix("Bearer ") if auth else None
                if token not in hub.writers:
                    return self._error(401, None, "Invalid credentials in Authorization header")
                if parts == ["api", "repos", "create"]:
                    return self._create(json.loads(body), hub.writers[token])
                if len(parts) < 6 or parts[0] != "api" or parts[1] not in ("models", "datasets", "spaces"):
                    return self._error(404, None, "no such endpoint")
                kind, repo, verb, rev = parts[1][:-1], "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                if parts[2] not in hub.writers[token]:
                    return self._error(403, None, f"You don't have the rights to push to {repo}")
                with hub._lock:
                    branches = hub.pushed.get((kind, repo))
                    if branches is None:
                        return self._error(404, "RepoNotFound", f"Repository {repo} not found")
                    if verb == "branch":
                        if rev in branches:
                            return self._error(409, None, f"Branch {rev} already exists")
                        branches[rev] = dict(branches["main"])
                        return self._json(200, {})
                    if rev not in branches:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    if verb == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(200, {"files": [self._mode(f) for f in files]})
                    if verb == "commit":
                        return self._commit(kind, repo, rev, body, branches[rev])
                return self._error(404, None, "no such endpoint")

            def _validate(self, payload: dict):
                content = payload.get("content", "")
                if content.startswith("---\n"):
                    try:
                        meta = yaml.safe_load(content.split("---\n", 2)[1])
                    except (yaml.YAMLError, IndexError) as e:
                        return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
                    if not isinstance(meta, dict):
                        return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
                return self._json(200, {"errors": [], "warnings": []})

            def _create(self, payload: dict, namespaces: list[str]):
                owner = payload.get("organization")
                kind = payload.get("type") or "model"
                repo = f"{owner}/{payload['name']}"
                if owner not in namespaces:
                    return self._error(403, None, f"You don't have the rights to create a repo under {owner}")
                url = f"{hub.url}/{kind}s/{repo}" if kind != "model" else f"{hub.url}/{repo}"
                with hub._lock:
                    if (kind, repo) in hub.pushed:
                        return self._json(409, {"error": "You already created this repo", "url": url})
                    hub.pushed[(kind, repo)] = {"main": {}}
                    hub.created[(kind, repo)] = payload
                return self._json(200, {"url": url, "name": repo})

            @staticmethod
            def _mode(f: dict) -> dict:
                return {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}

            def _commit(self, kind: str, repo: str, rev: str, body: bytes, files: dict[str, bytes]):
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                if not lines or lines[0].get("key") != "header":
                    return self._error(400, None, "the first line must be the header")
                paths = []
                for line in lines[1:]:
                    if line["key"] != "file" or line["value"].get("encoding") != "base64":
                        return self._error(400, None, f"unsupported operation {line['key']}")
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    paths.append(line["value"]["path"])
                oid = hashlib.sha1(body).hexdigest()
                hub.commits.append(
                    {"repo": repo, "type": kind, "revision": rev, "header": lines[0]["value"], "paths": paths}
                )
                return self._json(200, {"commitUrl": f"{hub.url}/{kind}s/{repo}/commit/{oid}", "commitOid": oid})

            def _json(self, status: int, doc: dict):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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

            def _error(self, status: int, code: str | None, message: str = ""):
                data = json.dumps({"error": message}).encode() if message else b""
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                if message:
                    self.send_header("X-Error-Message", message)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
