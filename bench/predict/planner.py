"""Predictions for many cells at once, on every core: what ``bench plan`` prints.

``entries(cells)`` returns one JSON-ready entry per cell, in the cells' order:
``{"label", "cell_id", "cell", ["notes"], "predicted" | "error"}``. A cell that
cannot be predicted carries its one-line ``error`` and the others go on.

A stated host (``host_memory``, the matrix's or ``bench plan --host-memory``) is used
as ``bench predict --host-memory`` uses it: a ``split: layers`` cell offloads to it the
blocks that fit on no card (``predicted.host_offload``: the modules, bytes, share of the
weights and the seconds of copies over PCIe they cost), and every cell's
``predicted`` gets ``host_memory_bytes`` and ``host_fits`` (host RAM per node within it).

Cells are grouped by the micro-step they replay (``trace_group``: the same
model, tuning, dtypes, checkpointing and adapters at any batch, length, method
or card), and each group is predicted by one process, so a trace missing from
the cache is traced once, and the replays a group shares (``estimate``) stay in
one process's caches. The groups go to one process per core, largest first;
the entries are put back in the cells' order, so the output is the serial one.

``entry(cell)`` is one cell's prediction in-process (what a long-running
caller, such as a server that keeps the caches warm, asks for).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bench.errors import UserError


def entry(
    cell,
    want_max_batch: bool = False,
    tokens: int | None = None,
    price_table: dict | None = None,
    calibration: dict | None = None,
    host_memory: int | None = None,
) -> dict:
    """``{"predicted": {...}}`` (memory, speed, max batch; ``"placement"``: the note of a
    ``split: layers`` cell's placement) or ``{"error": "one line"}`` for one cell."""
    out = _guarded(lambda: _predicted_fields(cell, tokens, price_table, calibration, host_memory))
    if want_max_batch:
        out = _with_max_batch(cell, out)
    return out


def _predicted_fields(cell, tokens, price_table, calibration, host_memory=None) -> dict:
    from bench.predict import predict
    from bench.predict.cli import host_fits, speed_fields

    p = predict(cell, host_memory)
    predicted = p.to_dict()
    predicted.update(speed_fields(cell, calibration, tokens, price_table, host_memory))
    if host_memory is not None:
        predicted["host_memory_bytes"] = host_memory
        predicted["host_fits"] = host_fits(p, host_memory)
    out: dict = {"predicted": predicted}
    if p.cards:  # split: layers: where accelerate puts each block
        from bench.predict import split
        from bench.predict.cli import placement_note

        moved = predicted["step_time_parts"].get("transfers") if predicted.get("step_time_seconds") else None
        offload = split.host_offload(cell, host_memory, moved)
        if offload is not None:
            predicted["host_offload"] = offload
        out["placement"] = placement_note(p, offload)
    return out


def _with_max_batch(cell, out: dict) -> dict:
    """``out`` with the cell's largest fitting batch added (an error there is the cell's error)."""
    from bench.predict import max_batch

    if "predicted" not in out:
        return out
    found = _guarded(lambda: {"max_batch": max_batch(cell)})
    if "error" in found:
        return found
    out["predicted"]["max_batch"] = found["max_batch"]
    return out


def _guarded(make) -> dict:
    try:
        return make()
    except UserError as err:
        return {"error": "; ".join(err.problems)}
    except Exception as err:  # a model the tracer cannot run: keep going, report it
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def trace_group(cell) -> tuple:
    """What the cell's replayed micro-step is traced from: cells with equal groups share
    one trace (the sentinel-shape ``shapes.ShapeKey``, whatever their batch, length,
    strategy's buffers, optimizer or card). Read from the recipe alone, without asking
    transformers for the default attention."""
    from bench import recipe

    r = recipe.of(cell)
    shape: tuple[int, ...] = (cell.batch, cell.seq, cell.new_tokens) if not cell.trains else ()
    if cell.trains and _short_positions(cell.model):  # traced at its real length (``shapes.sentinel``)
        shape = (cell.seq,)
    return (
        cell.model,
        cell.task,
        cell.tuning,
        r.trace_dtypes if cell.trains else r.build_dtype,
        r.grad_ckpt,
        cell.attn,
        (cell.lora_r, cell.lora_alpha, cell.lora_dropout, cell.lora_targets) if r.adapters else (),
        r.use_cache,
        r.freeze,
        getattr(r, "outputs_to_fp32", False),
        (r.head, r.num_labels),
        shape,
    )


def _short_positions(model: str) -> bool:
    from bench import models
    from bench.predict import shapes

    return shapes.short_positions(models.resolve(model))


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def entries(
    cells,
    notes: dict | None = None,
    want_max_batch: bool = False,
    tokens: int | None = None,
    price_table: dict | None = None,
    calibration: dict | None = None,
    jobs: int | None = None,
    on_entry: Callable[[dict], object] | None = None,
    host_memory: int | None = None,
) -> list[dict]:
    """One entry per cell, in order; ``jobs`` processes (default: one per core, 1: here);
    ``on_entry`` is called with each entry as its group is done (the progress bar);
    ``host_memory``: the stated host RAM of one node (module docstring)."""
    if jobs is not None and (isinstance(jobs, bool) or jobs < 1):
        raise UserError(f"--jobs: {jobs!r} is not allowed; allowed: a positive number of processes")
    notes = notes or {}
    out = []
    for c in cells:
        e = {"label": c.label, "cell_id": c.cell_id, "cell": c.to_dict()}
        if notes.get(c.cell_id):
            e["notes"] = list(notes[c.cell_id])
        out.append(e)
    options = (want_max_batch, tokens, price_table, calibration, host_memory)
    for i, result in _predicted(list(cells), options, jobs or cores()):
        placement = result.pop("placement", None)
        out[i].update(result)
        if placement:
            out[i]["notes"] = [*out[i].get("notes", []), placement]
        if on_entry is not None:
            on_entry(out[i])
    return out


def _predicted(cells: list, options: tuple, jobs: int):
    """(index, result) for every cell, computed by up to ``jobs`` processes, yielded group by group."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cells):
        try:
            key = trace_group(c)
        except Exception:  # noqa: BLE001  an unknown model: entry() reports it, in a group of its own
            key = ("ungrouped", i)
        groups.setdefault(key, []).append(i)
    work = sorted(groups.values(), key=lambda idx: -_cost(cells, idx, options[0]))
    jobs = min(jobs, len(work))
    if jobs <= 1:
        for idx in work:
            yield from zip(idx, _group([cells[i] for i in idx], options))
        return
    # fork where torch is not loaded (workers inherit this process's warm caches); a
    # process that loaded torch forks its workers from a fresh server process instead
    # (forking torch's threads is unsafe)
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if "torch" not in sys.modules else "forkserver")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [(idx, pool.submit(_group, [cells[i] for i in idx], options)) for idx in work]
        for idx, fut in futures:
            try:
                yield from zip(idx, fut.result())
            except BrokenProcessPool as e:
                yield from ((i, {"error": f"predictor failed: a worker process died ({e})"}) for i in idx)


def _group(cells: list, options: tuple) -> list[dict]:
    """The results of one group's cells: every prediction first, then the max-batch searches,
    which then find the batches of the group's cells replayed already."""
    want_max_batch, rest = options[0], options[1:]
    out = [entry(c, False, *rest) for c in cells]
    if want_max_batch:
        out = [_with_max_batch(c, e) for c, e in zip(cells, out)]
    return out


def _cost(cells: list, idx: list[int], want_max_batch: bool) -> float:
    """A rough replay cost of a group, to hand out the largest first: events grow with the
    model's depth and the micro-steps per optimizer step."""
    from bench import models

    try:
        depth = models.resolve(cells[idx[0]].model).layers or 1
    except Exception:  # noqa: BLE001  reported by entry()
        depth = 1
    return sum(depth * cells[i].grad_accum for i in idx) * (4 if want_max_batch else 1)
