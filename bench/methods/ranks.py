"""Where this process sits in its world: rank, local rank, world size.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; a worker started alone gets a one-rank world from
``single_rank_env`` (``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0
MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port>``), so every strategy can run
in a real process group. Nothing here imports torch: the worker reads these
before its heavy imports.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_rank_env(env: MutableMapping[str, str] | None = None) -> None:
    """Give a worker started without torchrun a one-rank world (in place)."""
    env = os.environ if env is None else env  # type: MutableMapping[str, str]  # type: ignore[no-redef]
    if "RANK" in env and "WORLD_SIZE" in env:  # type: ignore[operator]
        return
    env.update(  # type: ignore[union-attr]
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
