"""Cells on a Ray cluster the user already runs: one Ray task per cell.

Ray schedules; bench does not. Each cell becomes one task that asks for the
cell's GPUs (``num_gpus``; none on ``--device cpu``) and, with
``--require-gpu-type``, for a node whose ``accelerator_type`` is the matrix's
target card. On its node the task runs exactly what ``LocalExecutor`` runs on
this host (the same worker child, timeout and process-group kill, through
``LocalExecutor`` itself) and returns the result dict. The driver, this
process, writes the records into its own results store, so resume,
``--retry-failed`` and the statuses are those of the local executor. Files a
cell points to (a model's ``config.json``, a ``ds_config``) are read on the
driver and travel with the task: nodes need bench, not the driver's files.

- ``max_calls=1``: a fresh Ray worker process per cell, on top of the fresh
  worker child, so nothing one cell leaves in its Ray worker reaches the next.
- ``max_retries=1``: a task whose Ray worker or node dies mid-cell is retried
  once (where Ray finds room; never on a dead node); a second death becomes an
  ``error`` record with Ray's reason. An ``oom``, ``error`` or ``timeout`` the
  worker reports is a result, never retried.
- Ctrl-C (or any exception in ``on_done``) cancels every outstanding task
  (``ray.cancel(force=True)``, which kills its Ray worker; the worker child
  sees its parent gone and exits). Records already written stay.

Records name the node that measured them (``environment.hostname``,
``ray_node_id``, ``ray_node_ip``): the node's part of the environment is
read on the node. Ray is imported only here, when ``--executor ray`` is asked
for; the driver never imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bench import gpus
from bench.errors import UserError
from bench.run import machine, outcome
from bench.run.executor import Job, LocalExecutor, now

RETRIES = 1
"""Re-runs of a cell whose Ray worker or node died (system failures only)."""
FORWARDED_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "BENCH_WORKER_INJECT")
"""Driver variables the worker child gets, as a local child inherits them from the runner's shell.

They change what a cell measures. ``OMP_NUM_THREADS`` is removed when the
driver has none: Ray sets it to the task's CPU count (1), which would slow
CPU-side work (optimizer offload, ``--device cpu``) compared with a local run.
"""
ACCELERATOR_TYPES: dict[str, tuple[str, ...]] = {
    # Catalog name -> Ray accelerator_type labels (the catalog's ``ray_accelerator_types``), most
    # precise first; the last is the label Ray derives on its own from the NVML name a current
    # driver reports (ray._private.accelerators.nvidia_gpu). Names with a size exist where an
    # operator set them (`ray start --resources '{"accelerator_type:A100-80G": 1}'`, the constants
    # NVIDIA_A100_40G/_80G) or where an old driver reports the bare model ("A100-SXM4-40GB").
    # tests/test_run_ray.py checks both against Ray. A new card is one catalog entry.
    name: gpus.resolve(name).ray_accelerator_types
    for name in gpus.names()
    if gpus.resolve(name).ray_accelerator_types
}
NO_RAY = "--executor ray needs Ray on this machine and on every node: pip install 'ray>=2.40'"
LABEL_PREFIX = "accelerator_type:"
"""How Ray names the resource behind the ``accelerator_type`` option."""


def accelerator_types(gpu: str) -> tuple[str, ...]:
    """Ray labels of a catalog GPU (any name ``bench.gpus.resolve`` accepts), most precise first."""
    name = gpus.resolve(gpu).name
    if name not in ACCELERATOR_TYPES:
        raise UserError(
            f"--require-gpu-type: no Ray accelerator_type is known for {name}; "
            f"known: {', '.join(sorted(ACCELERATOR_TYPES))}"
        )
    return ACCELERATOR_TYPES[name]


def pick_accelerator_type(gpu: str, cluster: dict[str, float]) -> tuple[str, list[str]]:
    """The label to require for ``gpu`` on a cluster with these resources, and notes for the user.

    The most precise label a node has now wins; when none has any, Ray's own
    label (an autoscaler may add such a node; ``RayExecutor.run`` says so).
    """
    labels = accelerator_types(gpu)
    present = [lb for lb in labels if cluster.get(LABEL_PREFIX + lb)]
    label = present[0] if present else labels[-1]
    notes = []
    shared = sorted(n for n, lbs in ACCELERATOR_TYPES.items() if label in lbs and n != gpus.resolve(gpu).name)
    if shared:
        notes.append(
            f"Ray labels {', '.join(shared)} nodes {label} too; a cell that lands on one is recorded as "
            f"error (give {gpu} nodes --resources '{{\"{LABEL_PREFIX}{labels[0]}\": 1}}')"
        )
    return label, notes


def task_options(job: Job, accelerator_type: str | None = None, retries: int = RETRIES) -> dict[str, Any]:
    """``.options(...)`` of one cell's task (``max_calls=1`` is set on the remote function itself)."""
    options: dict[str, Any] = {
        "num_cpus": 1,
        "num_gpus": 0 if job.device == "cpu" else job.gpus,
        "max_retries": retries,
        "retry_exceptions": False,
        "name": f"bench:{job.slug}",
    }
    if accelerator_type is not None:
        options["accelerator_type"] = accelerator_type
    return options


def card_problem(target: str, found: list[machine.GpuInfo], ids: list[int]) -> str | None:
    """Why the GPUs Ray gave a cell are not the matrix's card, or ``None`` when they are."""
    want = gpus.resolve(target)
    for info in (g for g in found if g.index in ids):
        have = gpus.from_nvml_name(info.name, info.memory_bytes)
        if have is None or have.name != want.name:
            return (
                f"--require-gpu-type: this node's GPU {info.index} is {info.name!r} "
                f"({have.name if have else 'not in the catalog'}), the matrix targets {want.name}"
            )
    return None


FILE_FIELDS = ("model", "ds_config")
"""Cell fields that may name a JSON file (a model's config.json or its folder, a DeepSpeed config)."""


def files_of(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The files a cell points to, read here on the driver: ``{field: {"name", "text", "folder"}}``.

    They travel with the task, so nodes need not see the driver's paths.
    Catalog names and hub ids are not files here and stay as they are.
    """
    out = {}
    for key in FILE_FIELDS:
        value = cell.get(key)
        if not isinstance(value, str) or ("/" not in value and "\\" not in value):
            continue
        path = Path(value).expanduser()
        folder = path.is_dir()
        source = path / "config.json" if folder else path
        if source.is_file():
            name = path.name
            if not folder and name == "config.json" and path.resolve().parent.name:
                name = f"{path.resolve().parent.name}/config.json"  # the slug names a config.json by its folder
            out[key] = {"name": name, "text": source.read_text(encoding="utf-8"), "folder": folder}
    return out


def place_files(cell: dict[str, Any], files: dict[str, dict[str, Any]], root: Path) -> dict[str, Any]:
    """``cell`` with each file of ``files_of`` written under ``root``, its field pointing there.

    The base name stays (the slug shows it); the content, which the cell id
    hashes, is the driver's.
    """
    cell = dict(cell)
    for key, f in files.items():
        target = root / key / f["name"]
        written = target / "config.json" if f["folder"] else target
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(f["text"], encoding="utf-8")
        cell[key] = str(target)
    return cell


def run_on_node(
    job_dict: dict[str, Any],
    files: dict[str, dict[str, Any]],
    env: dict[str, str],
    require_gpu_type: bool = False,
    accelerator_type: str | None = None,
) -> dict[str, Any]:
    """The Ray task: run one cell's worker on this node as ``LocalExecutor`` would; return its result."""
    import ray

    for key in FORWARDED_ENV:  # this Ray worker ends with the task (max_calls=1)
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    device = job_dict["device"]
    node = {
        **machine.environment(device),
        "executor": "ray",
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        "ray_node_ip": ray.util.get_node_ip_address(),
    }
    if accelerator_type is not None:
        node["ray_accelerator_type"] = accelerator_type
    ids: list[int] = []
    problem = None
    if device == "cuda":
        try:
            ids = [int(i) for i in ray.get_gpu_ids()]
        except ValueError:
            problem = (
                f"Ray gave this cell GPUs by UUID ({ray.get_gpu_ids()}); "
                f"start the node's raylet with CUDA_VISIBLE_DEVICES as indices, or unset"
            )
        if problem is None and require_gpu_type:
            problem = card_problem(job_dict["cell"]["gpu"], machine.gpus(), ids)
    if problem is not None:
        return {**outcome.failed(problem), "environment": node, "started_at": now(), "finished_at": now()}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-files-") as root:
        job = Job.from_dict({**job_dict, "cell": place_files(job_dict["cell"], files, Path(root))})
        LocalExecutor(ids).run([job], lambda _job, result: results.append(result))
    result = results[0]
    result["environment"] = {**node, **(result.get("environment") or {})}
    return result


def failure(error: Exception, retries: int) -> dict[str, Any]:
    """The result of a task Ray could not finish (``ray.get`` raised)."""
    import ray.exceptions as rex

    lines = str(error).strip().splitlines()
    text = "\n".join(lines[-outcome.TAIL_LINES :])[-outcome.TAIL_CHARS :]
    name = type(error).__name__
    if isinstance(error, rex.OutOfMemoryError):  # Ray's memory monitor: the host ran out, as the OOM killer locally
        return outcome.failed(f"ray: {name}: the node ran out of host memory\n{text}".rstrip(), "oom")
    if isinstance(error, (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError)):
        how = {0: "not retried", 1: "retried once"}.get(retries, f"retried {retries} times")
        message = f"ray: the cell's Ray worker or node died ({how}, then given up): {name}\n{text}"
        return outcome.failed(message.rstrip())
    return outcome.failed(f"ray: {name}\n{text}".rstrip())


def describe_cluster(nodes: list[dict[str, Any]]) -> str:
    """``5 nodes, 96 CPU, 24 GPU (A100, A10G)``: the live nodes of ``ray.nodes()``."""
    alive = [n for n in nodes if n.get("Alive")]
    total: dict[str, float] = {}
    for n in alive:
        for k, v in (n.get("Resources") or {}).items():
            total[k] = total.get(k, 0) + v
    labels = sorted(k[len(LABEL_PREFIX) :] for k in total if k.startswith(LABEL_PREFIX))
    return (
        f"{len(alive)} node{'s' if len(alive) != 1 else ''}, {total.get('CPU', 0):g} CPU, "
        f"{total.get('GPU', 0):g} GPU" + (f" ({', '.join(labels)})" if labels else "")
    )


def fits_somewhere(options: dict[str, Any], nodes: list[dict[str, Any]]) -> bool:
    """Whether some live node has the resources one task asks for (free or not)."""
    need = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
    if options.get("accelerator_type"):
        need[LABEL_PREFIX + options["accelerator_type"]] = 0.001
    return any(
        all((n.get("Resources") or {}).get(k, 0) >= v for k, v in need.items() if v) for n in nodes if n.get("Alive")
    )


def needs(options: dict[str, Any]) -> str:
    """What a task asks of one node, in words: ``2 GPUs with accelerator_type A100``."""
    gpus_ = options.get("num_gpus", 0)
    parts = [f"{gpus_:g} GPU{'s' if gpus_ != 1 else ''}"] if gpus_ else []
    if options.get("accelerator_type"):
        parts.append(f"accelerator_type {options['accelerator_type']}")
    return " with ".join(parts) or f"{options.get('num_cpus', 1):g} CPU"


class RayExecutor:
    """Run jobs as Ray tasks on an existing cluster; write nothing but call ``on_done``.

    ``address``: what ``ray.init`` takes (``auto``, ``HOST:PORT``,
    ``ray://HOST:10001``); ``None`` means ``$RAY_ADDRESS`` or ``auto``. The
    executor connects on its first ``run`` and stays connected (a
    ``--find-max-batch`` run calls ``run`` once per round).
    """

    remote = True
    """Cells run on other hosts: this host's GPUs (or their absence) say nothing about them."""

    def __init__(
        self,
        address: str | None = None,
        require_gpu_type: bool = False,
        retries: int = RETRIES,
        err: TextIO | None = None,
    ) -> None:
        if importlib.util.find_spec("ray") is None:  # before the runner writes anything
            raise UserError(NO_RAY)
        self.address = address
        self.require_gpu_type = require_gpu_type
        self.retries = retries
        self.err = err or sys.stderr
        self._ray: Any = None

    def connect(self) -> Any:
        """``ray``, connected to the cluster (once); a ``UserError`` with the fix when that fails."""
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise UserError(NO_RAY) from None
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(
                    f"--executor ray: cannot connect to a Ray cluster at {address!r} ({first}); "
                    f"start one (`ray start --head`) or give --address HOST:PORT or "
                    f"ray://HOST:10001"
                ) from None
            print(f"ray: connected to {address}: {describe_cluster(ray.nodes())}", file=self.err, flush=True)
        self._ray = ray
        return ray

    def _labels(self, ray: Any, jobs: list[Job]) -> dict[str, str]:
        """Each target GPU's label under ``--require-gpu-type`` (notes printed once)."""
        if not self.require_gpu_type:
            return {}
        cluster = ray.cluster_resources()
        labels = {}
        for gpu in dict.fromkeys(j.cell["gpu"] for j in jobs):
            labels[gpu], notes = pick_accelerator_type(gpu, cluster)
            for note in notes:
                print(f"note: {note}", file=self.err, flush=True)
        return labels

    def run(self, jobs: list[Job], on_done: Callable[[Job, dict[str, Any]], None]) -> None:
        if not jobs:
            return
        ray = self.connect()
        task = ray.remote(max_calls=1)(run_on_node)
        labels = self._labels(ray, jobs)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        nodes = ray.nodes()
        pending: dict[Any, Job] = {}
        warned: set[str] = set()
        try:
            for job in jobs:
                label = labels.get(job.cell["gpu"])
                options = task_options(job, label, self.retries)
                need = needs(options)
                if need not in warned and not fits_somewhere(options, nodes):
                    warned.add(need)
                    print(
                        f"note: no node has {need} now; such cells wait until one joins (Ctrl-C stops)",
                        file=self.err,
                        flush=True,
                    )
                ref = task.options(**options).remote(
                    job.to_dict(), files_of(job.cell), env, self.require_gpu_type, label
                )
                pending[ref] = job
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        result = {**failure(e, self.retries), "finished_at": now()}
                    on_done(job, result)
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone; nothing to cancel
                    pass
