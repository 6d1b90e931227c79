"""The parent's loop of ``bench run``: validate, resume, predict, run, persist.

``run(options)`` reads as the pipeline it is:

1. load and validate the whole matrix (``bench.matrix.load``), find the
   device and check the results folder (``bench.destination``), before
   anything is written (a bad input leaves the store untouched);
2. take the matrix folder's lock (``bench.run.lock``: a second runner exits 2)
   and clear what killed runners left (``bench.run.leftovers``);
3. drop cells the store already has (``Store.completed``; ``--force`` keeps
   none, ``--retry-failed`` reruns ``error``/``timeout``/``skipped``);
4. write ``machine.json`` and ask the predictor about the rest;
5. hand the cells to an executor and write each record the moment its cell
   ends (atomically: Ctrl-C or ``kill -9`` loses at most the cells in flight;
   a record the store cannot take is kept by ``bench.run.fallback`` and the
   run stops). SIGTERM ends the run as Ctrl-C does: children, the predictor
   and the scratch folder go with it.

The parent never imports torch. The exit code is 0 when every cell ended
``ok``, ``oom`` or ``skipped`` (an OOM is a measurement) and 1 when any cell
ended ``error`` or ``timeout``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bench import cell as cellmod, destination, matrix as matrixmod, recipe as recipes
from bench.cell import Cell
from bench.errors import UserError
from bench.run import archcheck, fallback, leftovers, machine, maxbatch, prediction, record
from bench.run.executor import Executor, Job, LocalExecutor
from bench.run.leftovers import clean_stale_temps
from bench.run.lock import RunnerLock
from bench.run.progress import Progress
from bench.store import Store

NO_GPU = "no CUDA GPU found; use --device cpu to run on the CPU, or `bench plan MATRIX` to predict without a GPU"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The flags of ``bench run``."""

    matrix: str
    overrides: list[str] = field(default_factory=list)
    device: str | None = None
    """``cuda``, ``cpu``, or ``None``: CUDA when a GPU is found, else an error."""
    results: str = "results"
    retry_failed: bool = False
    force: bool = False
    find_max_batch: bool = False
    skip_predicted_oom: bool = False
    emulate_target: bool = True
    timeout_s: float = 1800.0
    executor: str = "local"
    memory_snapshot: bool = False
    """Each cell's child dumps the CUDA allocator snapshot beside its record."""


def pick_device(wanted: str | None, usable: list[int]) -> str:
    """``cpu`` only on request; CUDA needs a usable GPU (else the one-line error with the fix)."""
    if wanted == "cpu":
        return "cpu"
    if not usable:
        raise UserError(NO_GPU)
    return "cuda"


def visible_gpu_ids(found: list[machine.GpuInfo], env: dict[str, str] | None = None) -> list[int]:
    """NVML indices the runner may use: all, or those ``CUDA_VISIBLE_DEVICES`` names."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    visible = env.get("CUDA_VISIBLE_DEVICES")  # type: ignore[union-attr]
    if visible is None:
        return [g.index for g in found]
    by_uuid = {g.uuid: g.index for g in found if g.uuid}
    ids = []
    for entry in (v.strip() for v in visible.split(",") if v.strip()):
        if entry.isdigit() and any(g.index == int(entry) for g in found):
            ids.append(int(entry))
        elif entry in by_uuid:
            ids.append(by_uuid[entry])
    return ids


class Runner:
    """One ``bench run``: the matrix, the store, the executor and the progress."""

    def __init__(
        self, opts: RunOptions, executor: Executor | None = None, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.matrix = matrixmod.load(opts.matrix, opts.overrides)
        remote = getattr(executor, "remote", False)  # cells run on other hosts (Ray): this one's GPUs don't matter
        found = machine.gpus() if opts.device != "cpu" and not remote else []
        usable = visible_gpu_ids(found)
        self.device = (opts.device or "cuda") if remote else pick_device(opts.device, usable)
        destination.check_folder(opts.results)  # before anything is printed or run
        if executor is None:
            destination.check_folder(tempfile.gettempdir(), "the temporary folder (TMPDIR)")
        self.store = Store(opts.results)
        self.executor = executor or LocalExecutor(usable if self.device == "cuda" else [])
        self.found = found
        self.environment: dict[str, Any] = {}
        self.statuses: dict[str, str] = {}

    def job(self, c: Cell) -> Job:
        return Job(
            cell=c.to_dict(),
            cell_id=c.cell_id,
            slug=c.slug,
            matrix=self.matrix.name,
            device=self.device,
            gpus=c.gpus,
            ranks=recipes.of(c).ranks,
            timeout_s=self.opts.timeout_s,
            emulate_target=self.opts.emulate_target,
            results=str(self.store.root),
            memory_snapshot=str(self.store.snapshot_path(self.matrix.gpu, self.matrix.name, c.cell_id))
            if self.opts.memory_snapshot
            else None,
        )

    def execute(
        self,
        cells: list[Cell],
        predicted: dict[str, Any] | prediction.Pending,
        progress: Progress,
        then: Callable[[Cell, dict[str, Any]], None] | None = None,
    ) -> None:
        """Run ``cells``; write each record as it ends."""
        by_id = {c.cell_id: c for c in cells}

        def on_done(job: Job, result: dict[str, Any]) -> None:
            c = by_id[job.cell_id]
            rec = record.build(job, c, result, predicted.get(c.cell_id), self.environment)
            self.write(rec)
            self.statuses[c.cell_id] = rec["status"]
            progress.cell_done(rec)
            if then is not None:
                then(c, rec)

        self.executor.run([self.job(c) for c in cells], on_done)

    def write(self, rec: dict[str, Any]) -> None:
        """Persist one record; if the store cannot take it, keep it elsewhere and stop."""
        try:
            self.store.write(rec)
        except OSError as e:
            raise fallback.keep(
                rec, self.store.path(self.matrix.gpu, rec["matrix"], rec["cell_id"]), e, self.err
            ) from None

    def run(self) -> int:
        """Take the results folder's lock, run (``_run``), and always let go of it."""
        folder = self.store.folder(self.matrix.gpu, self.matrix.name)
        held = RunnerLock(folder).acquire(self.matrix.path)
        try:
            return self._run()
        finally:
            held.release()

    def _run(self) -> int:
        m, opts = self.matrix, self.opts
        done = set() if opts.force else self.store.completed(m.gpu, m.name, opts.retry_failed)
        todo = [c for c in m.cells if c.cell_id not in done]
        folder = self.store.folder(m.gpu, m.name)
        print(
            f"{m.path}: {len(m.cells)} cells, {len(m.cells) - len(todo)} already in {folder}, "
            f"{len(todo)} to run on {self.device}",
            file=self.out,
            flush=True,
        )
        if opts.memory_snapshot and self.device != "cuda":
            print(
                f"note: --memory-snapshot: no allocator snapshot is taken on {self.device} "
                "(the allocator history is CUDA's); each record says so",
                file=self.out,
                flush=True,
            )
        if m.host_memory is not None:
            print(
                f"note: host_memory {round(m.host_memory / 2**30, 1):g} GiB is a planning figure (bench plan); "
                "a run measures this host (machine.json: host_memory_bytes), places split cells on the cards "
                "alone and predicts its records without it",
                file=self.out,
                flush=True,
            )
        clean_stale_temps(folder)
        leftovers.clean_scratch()
        try:
            self.store.write_machine(m.gpu, {**machine.describe(self.device, self.found), "executor": opts.executor})
        except OSError as e:
            raise UserError(
                f"--results {str(self.store.root)!r}: machine.json cannot be written "
                f"({e.strerror or e}); nothing was run"
            ) from None
        self.environment = machine.environment(self.device)
        if self.device == "cuda" and not getattr(self.executor, "remote", False) and (todo or opts.find_max_batch):
            archcheck.check()  # a torch without this card's kernels: one line, before any cell
        if opts.find_max_batch:
            self.find_max_batch(list(m.cells), done)
        elif todo:
            self.run_cells(todo)
        failed = [cid for cid, st in self.statuses.items() if st in ("error", "timeout")]
        counts = {st: list(self.statuses.values()).count(st) for st in dict.fromkeys(self.statuses.values())}
        summary = ", ".join(f"{n} {st}" for st, n in counts.items()) or "nothing to run"
        print(f"done: {summary}; results in {folder}", file=self.out, flush=True)
        return 1 if failed else 0

    def run_cells(self, todo: list[Cell]) -> None:
        predicted = prediction.Pending(todo)
        try:
            self._run_cells(todo, predicted)
        finally:
            predicted.close()  # the predictor's child never outlives the runner's loop

    def _run_cells(self, todo: list[Cell], predicted: prediction.Pending) -> None:
        progress = Progress(len(todo), out=self.out, err=self.err)
        if self.opts.skip_predicted_oom:
            predicted.wait()
            keep = []
            for c in todo:
                if prediction.fits(predicted.get(c.cell_id)) is False:
                    rec = record.skipped(c, self.matrix.name, predicted.get(c.cell_id), self.environment, self.device)  # type: ignore[arg-type]
                    self.write(rec)
                    self.statuses[c.cell_id] = "skipped"
                    progress.cell_done(rec)
                else:
                    keep.append(c)
            todo = keep
        try:
            self.execute(todo, predicted, progress)
        finally:
            progress.finish()
        answers = predicted.wait()
        missing = sum(answers.get(c.cell_id) is None for c in todo)
        if predicted.why:
            print(f"note: {predicted.why}", file=self.err, flush=True)
        elif missing:
            print(
                f"note: the predictor gave no prediction for {missing} of {len(todo)} cells "
                f"(`bench plan {self.opts.matrix}` says why)",
                file=self.err,
                flush=True,
            )

    def find_max_batch(self, cells: list[Cell], done: set[str]) -> None:
        """Bisect each group of cells that differ only in batch, one round of probes at a time."""
        groups = maxbatch.groups(cells)
        starts, predicted = self._search_starts(groups)
        searches = {
            k: maxbatch.BatchSearch(start=starts[k], candidates=[c.batch for c in g] if len(g) > 1 else None)
            for k, g in groups.items()
        }
        estimate = sum(max(1, (len(g) if len(g) > 1 else 16).bit_length()) for g in groups.values())
        progress = Progress(estimate, out=self.out, err=self.err)
        try:
            while True:
                probes: list[Cell] = []
                for key, search in searches.items():
                    c = self._next_probe(groups[key][0], search, done)
                    if c is not None:
                        probes.append(c)
                if not probes:
                    break
                self.execute(
                    probes,
                    predicted,
                    progress,
                    then=lambda c, rec: searches[maxbatch.group_key(c)].record(c.batch, rec["status"] == "ok"),
                )
        finally:
            progress.finish()
        for key, search in searches.items():
            base = groups[key][0]
            progress.note(f"max batch  {base.slug.replace(f'-b{base.batch}-', '-b?-')}: {search.summary()}")

    def _next_probe(self, base: Cell, search: maxbatch.BatchSearch, done: set[str]) -> Cell | None:
        """The next batch to run for a group, answering from the store where it can."""
        while (batch := search.next()) is not None:
            c = cellmod.replace(base, batch=batch)
            if c.cell_id in done:
                rec = self.store.read(self.matrix.gpu, self.matrix.name, c.cell_id)
                search.record(batch, rec is not None and rec["status"] == "ok")
                continue
            return c
        return None

    def _search_starts(self, groups: dict[str, list[Cell]]) -> tuple[dict[str, int], dict[str, Any]]:
        """Each group's first batch: the largest the predictor says fits."""
        asked: list[Cell] = []
        for g in groups.values():
            batches = [c.batch for c in g] if len(g) > 1 else [2**i for i in range(11)] + [g[0].batch]
            asked += [cellmod.replace(g[0], batch=b) for b in sorted(set(batches))]
        predicted, why = prediction.predict(asked)
        if why:
            print(f"note: {why}; bisection starts from the middle", file=self.err, flush=True)
        starts = {}
        for key, g in groups.items():
            fitting = [
                c.batch for c in asked if maxbatch.group_key(c) == key and prediction.fits(predicted.get(c.cell_id))
            ]
            if fitting:
                starts[key] = max(fitting)
            elif len(g) > 1:
                starts[key] = g[len(g) // 2].batch if why else g[0].batch
            else:
                starts[key] = g[0].batch
        return starts, predicted


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM ends the run the way Ctrl-C does: children killed, scratch removed, lock let go."""
    print("error: terminated (SIGTERM); the cells in flight were stopped", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run(opts: RunOptions, executor: Executor | None = None) -> int:
    """``bench run``: returns the exit code (see the module docstring)."""
    runner = Runner(opts, executor)
    if threading.current_thread() is not threading.main_thread():
        return runner.run()
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
