"""Before the first CUDA cell: the installed torch must have kernels for every visible card.

Asks a child (``bench.worker.archcheck``: the parent never imports torch) and
turns a card without kernels into one ``UserError`` naming the card, its
compute capability, what the build carries and the build to install.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import torchbuild
from bench.errors import UserError


def problem(answer: dict) -> str | None:
    """The one-line refusal for a child's answer, or None when every card has kernels."""
    if "error" in answer:
        return f"bench run --device cuda: {answer['error']}"
    bad = [c for c in answer.get("cards", []) if not c["ok"]]
    if not bad:
        return None
    caps = [c["capability"] for c in answer["cards"]]
    try:
        fix = f"install {torchbuild.choose(caps, None).index_url} (make install picks it on this host)"
    except ValueError as e:
        fix = str(e)
    c = bad[0]
    return (
        f"torch {answer.get('torch')} (CUDA {answer.get('cuda')}) has no kernels for GPU {c['index']} {c['name']} "
        f"(compute capability {c['capability']}; the build carries {' '.join(c['arch_list']) or 'none'}): {fix}"
    )


def check(python: str = sys.executable) -> None:
    """Raise ``UserError`` when a visible card has no kernels in the installed torch."""
    try:
        out = subprocess.run(
            [python, "-m", "bench.worker.archcheck"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"bench run: the CUDA kernel check could not run ({e})") from None
    try:
        answer = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"bench run: the CUDA kernel check failed: {tail[0][:300]}") from None
    line = problem(answer)
    if line:
        raise UserError(line)
