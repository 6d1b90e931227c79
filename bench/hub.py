"""Hugging Face Hub configs: a model that is not in the catalog, by its hub id.

``config(repo_id)`` downloads the repository's ``config.json`` and nothing
else (never weights) with ``huggingface_hub.hf_hub_download``, so the hub
client's own rules apply: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), the token
(``HF_TOKEN`` or ``huggingface-cli login``), ``HF_ENDPOINT`` for a mirror and
``HF_HUB_OFFLINE=1`` to use the cache only. The environment is read at each
call rather than when ``huggingface_hub`` was imported, so a process that
changes it (a test, a notebook) gets what it set.

Every failure is one ``UserError`` line saying which and what to do: a gated
or private repository (log in / accept the licence), a repository or a
``config.json`` that does not exist, the hub unreachable or offline mode with
nothing cached (pass a local config.json instead).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bench.errors import UserError

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
"""``owner/name`` as the hub spells repository ids (one slash, no path prefix)."""
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def looks_like_repo_id(model: str) -> bool:
    """Whether ``model`` has the shape of a hub repository id (and not of a file path)."""
    return bool(REPO_ID.fullmatch(model)) and not model.endswith(".json") and ".." not in model


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # the hub client's default (~/.cache/huggingface/hub)


def _what_to_do(repo_id: str) -> str:
    return f"give a local config.json instead (download it from {repo_id}'s page), or a catalog name (bench models)"


def config(repo_id: str, revision: str | None = None) -> dict:
    """The ``config.json`` of hub repository ``repo_id``, downloaded (or read from the cache)."""
    from huggingface_hub import errors as hf, hf_hub_download

    where = f"model: {repo_id!r}"
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        path = hf_hub_download(
            repo_id,
            "config.json",
            revision=revision,
            cache_dir=_cache_dir(),
            endpoint=endpoint.rstrip("/"),
            token=os.environ.get("HF_TOKEN") or None,
            local_files_only=_offline(),
        )
    except hf.GatedRepoError:
        raise UserError(
            f"{where} is a gated repository on {endpoint}: accept its licence on the model page and "
            f"log in (huggingface-cli login, or set HF_TOKEN), or {_what_to_do(repo_id)}"
        ) from None
    except hf.RepositoryNotFoundError:
        raise UserError(
            f"{where} was not found on {endpoint} (or is private: log in with huggingface-cli login "
            f"or set HF_TOKEN); check the id, or {_what_to_do(repo_id)}"
        ) from None
    except hf.RevisionNotFoundError:
        raise UserError(f"{where}: revision {revision!r} does not exist on {endpoint}") from None
    except hf.RemoteEntryNotFoundError:
        raise UserError(
            f"{where} has no config.json on {endpoint} (not a transformers model?); {_what_to_do(repo_id)}"
        ) from None
    except hf.LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE)" if _offline() else f"{endpoint} cannot be reached"
        raise UserError(
            f"{where}: {why} and its config.json is not in the hub cache; connect once "
            f"(the config is then cached), or {_what_to_do(repo_id)}"
        ) from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise UserError(
            f"{where}: {endpoint} answered HTTP {status} for its config.json; {_what_to_do(repo_id)}"
        ) from None
    except (OSError, ValueError) as e:  # connection errors the client did not wrap, a bad id
        raise UserError(
            f"{where}: its config.json could not be fetched from {endpoint} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"{_what_to_do(repo_id)}"
        ) from None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: the downloaded config.json is not readable JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model_type"), str):
        raise UserError(f"{where}: its config.json has no 'model_type'; not a transformers model config")
    return doc
