"""``bench run --executor ray`` on a throwaway one-node Ray cluster on this host (no GPU needed).

The cluster is started in this process (``ray.init``, 2 CPUs, a ~100 MB
object store, a fake ``accelerator_type:A100-80G`` resource); ``bench run``
runs as a child process connected to it by ``--address``, like a user's
driver. Ray's worker processes are found in /proc as the parents of the
bench workers writing into a test's own results folder, and killed to stand
for a node that dies mid-cell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from bench import gpus  # noqa: E402
from bench.cell import normalize  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.run import ray_executor as rx  # noqa: E402
from bench.run.executor import Job  # noqa: E402
from bench.run.machine import GpuInfo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "matrices" / "smoke-cpu.yaml"
SUBSET = [
    "model=[tiny-gpt2,tiny-llama]",
    "method=full",
    "gpus=1",
    "grad_accum=1",
    "loop=plain",
    "head=lm",
    "num_labels=2",
]
"""4 cells of the smoke matrix: training and generation of two models."""
FAKE_LABEL = "A100-80G"
ONE_CELL = (
    "name: one\ngpu: a100-80gb\ndefaults: {model: tiny-gpt2, batch: 1, seq: 16, steps: 2, warmup: 0}\n"
    "sweep: {method: [full]}\n"
)
FOUR_CELLS = (
    "name: four\ngpu: a100-80gb\ndefaults: {model: tiny-gpt2, seq: 16, steps: 1, warmup: 0}\n"
    "sweep: {batch: [1, 2, 3, 4]}\n"
)
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
"""The test cluster and its drivers agree on no token (Ray >= 2.52 may default to one)."""


# --- pure pieces: no cluster ---------------------------------------------------------------------------------


def job(device: str = "cuda", gpus_: int = 1, gpu: str = "a100-80gb") -> Job:
    c = normalize({"model": "tiny-gpt2", "gpu": gpu, "gpus": gpus_, "method": "ddp" if gpus_ > 1 else "full"})
    return Job(cell=c.to_dict(), cell_id=c.cell_id, slug=c.slug, matrix="m", device=device, gpus=gpus_)


def ray_label_of(nvml_name: str) -> str:
    manager = pytest.importorskip("ray._private.accelerators.nvidia_gpu").NvidiaGPUAcceleratorManager
    return manager._gpu_name_to_accelerator_type(nvml_name)


def test_every_catalog_gpu_maps_to_the_labels_ray_gives_its_nodes():
    from ray.util.accelerators import accelerators as constants

    known = {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str)}
    assert set(rx.ACCELERATOR_TYPES) == set(gpus.names())
    for name in gpus.names():
        labels = rx.accelerator_types(name)
        derived = {ray_label_of(n) for n in gpus.resolve(name).nvml_names}
        assert derived <= set(labels), name  # whatever NVML name the node reports, its label is one of ours
        assert labels[-1] == ray_label_of(gpus.resolve(name).nvml_names[0]), name  # the usual label comes last
        assert set(labels) <= known | derived, name  # nothing invented


def test_the_most_precise_label_the_cluster_has_wins():
    label, notes = rx.pick_accelerator_type(
        "a100-80gb", {"CPU": 8, "accelerator_type:A100": 1, "accelerator_type:A100-80G": 1}
    )
    assert label == "A100-80G" and notes == []
    label, notes = rx.pick_accelerator_type("NVIDIA A100-SXM4-80GB", {"accelerator_type:A100": 2})
    assert label == "A100"
    assert len(notes) == 1 and "a100-40gb nodes A100 too" in notes[0] and "accelerator_type:A100-80G" in notes[0]
    assert rx.pick_accelerator_type("h200", {"accelerator_type:A100": 2}) == ("H200", [])  # Ray's own
    label, notes = rx.pick_accelerator_type("h100-80gb", {"accelerator_type:A100": 2})  # PCIe and NVL cards share it
    assert label == "H100" and len(notes) == 1 and "h100-nvl-94gb, h100-pcie-80gb nodes H100 too" in notes[0]


def test_task_options():
    assert rx.task_options(job("cpu", 1)) == {
        "num_cpus": 1,
        "num_gpus": 0,
        "max_retries": 1,
        "retry_exceptions": False,
        "name": f"bench:{job().slug}",
    }
    opts = rx.task_options(job("cuda", 2), "A100-80G")
    assert opts["num_gpus"] == 2 and opts["accelerator_type"] == "A100-80G"


def test_a_node_with_another_card_is_refused_by_name():
    found = [
        GpuInfo(0, "NVIDIA A100-SXM4-40GB", memory_bytes=42949672960),
        GpuInfo(1, "NVIDIA A100-SXM4-80GB", memory_bytes=85899345920),
    ]
    assert rx.card_problem("a100-80gb", found, [1]) is None
    problem = rx.card_problem("a100-80gb", found, [0, 1])
    assert "GPU 0 is 'NVIDIA A100-SXM4-40GB' (a100-40gb), the matrix targets a100-80gb" in problem


def test_ray_failures_become_statuses():
    from ray import exceptions as rex

    crashed = rx.failure(rex.WorkerCrashedError(), retries=1)
    assert crashed["status"] == "error" and "died (retried once, then given up): WorkerCrashedError" in crashed["error"]
    assert rx.failure(rex.OutOfMemoryError("node full"), retries=1)["status"] == "oom"
    assert rx.failure(RuntimeError("boom"), retries=1)["error"].startswith("ray: RuntimeError\nboom")


@pytest.mark.parametrize("as_folder", [False, True], ids=["config.json", "folder"])
def test_files_a_cell_points_to_travel_with_it(tmp_path, as_folder):
    from bench import models

    config = models.resolve("tiny-gpt2").config
    mine = tmp_path / "driver" / "mine"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text(json.dumps(config))
    ds = tmp_path / "driver" / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    model = str(mine if as_folder else mine / "config.json")
    cell = normalize({"model": model, "gpu": "a100-80gb", "method": "zero2", "ds_config": str(ds)})
    cell_id, files = cell.cell_id, rx.files_of(cell.to_dict())  # the id hashes the files: read it first
    assert set(files) == {"model", "ds_config"}
    placed = rx.place_files(cell.to_dict(), files, tmp_path / "node")
    shutil.rmtree(tmp_path / "driver")  # the node never sees the driver's paths
    on_node = normalize(placed)
    assert on_node.slug == cell.slug and on_node.ds_config != cell.ds_config
    assert models.resolve(on_node.model).config == config
    if not as_folder:  # files are hashed by content, so the id survives the move (a folder is hashed by path)
        assert on_node.cell_id == cell_id
    assert rx.files_of(normalize({"model": "tiny-gpt2", "gpu": "a100-80gb"}).to_dict()) == {}


def test_cluster_summary_and_feasibility():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8, "GPU": 2, "accelerator_type:A100": 1}},
        {"Alive": False, "Resources": {"CPU": 8, "GPU": 8}},
    ]
    assert rx.describe_cluster(nodes) == "1 node, 8 CPU, 2 GPU (A100)"
    assert rx.fits_somewhere(rx.task_options(job("cuda", 2), "A100"), nodes)
    assert not rx.fits_somewhere(rx.task_options(job("cuda", 4)), nodes)  # only the dead node had 8
    assert not rx.fits_somewhere(rx.task_options(job("cuda", 1), "H100"), nodes)
    assert rx.needs(rx.task_options(job("cuda", 2), "A100")) == "2 GPUs with accelerator_type A100"
    assert rx.needs(rx.task_options(job("cpu", 1), "A100")) == "accelerator_type A100"
    assert rx.needs(rx.task_options(job("cpu", 1))) == "1 CPU"


@pytest.mark.parametrize("flag", [["--address", "auto"], ["--require-gpu-type"]])
def test_ray_flags_need_the_ray_executor(tmp_path, capsys, flag):
    code = main(["run", str(SMOKE), "--device", "cpu", "--results", str(tmp_path / "r"), *flag])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --address and --require-gpu-type need --executor ray"
    assert not (tmp_path / "r").exists()


def test_without_ray_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rx.importlib.util, "find_spec", lambda name: None)
    code = main(["run", str(SMOKE), "--device", "cpu", "--results", str(tmp_path / "r"), "--executor", "ray"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {rx.NO_RAY}"
    assert not (tmp_path / "r").exists()


# --- a real cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """The address of a one-node cluster owned by this process; stopped (only it) at the end."""
    saved = {k: os.environ.get(k) for k in NO_AUTH}
    os.environ.update(NO_AUTH)
    temp = tempfile.mkdtemp(prefix="bray-", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(
        num_cpus=2,
        resources={f"accelerator_type:{FAKE_LABEL}": 1},
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _temp_dir=temp,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(temp, ignore_errors=True)


def bench_run(
    matrix: Path, results: Path, *args: str, address: str | None = None, popen: bool = False
) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "bench", "run", str(matrix), "--device", "cpu", "--results", str(results), *args]
    if address is not None:
        cmd += ["--executor", "ray", "--address", address]
    env = {**os.environ, **NO_AUTH}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def records(folder: Path) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in sorted(finished_files(folder))}


def workers_for(results: Path) -> list[tuple[int, int]]:
    """(pid, parent pid) of live bench workers whose job writes into ``results``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state, ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if b"bench.worker.child" not in argv or state == "Z":
                continue
            job_file = Path(argv[argv.index(b"bench.worker.child") + 1].decode())
            if json.loads(job_file.read_text())["results"] == str(results):
                found.append((int(p.name), int(ppid)))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


def kill_ray_worker_of_next_cell(results: Path, seen: set[int], deadline: float) -> int:
    """SIGKILL the Ray worker running a bench worker not in ``seen``: a node dying mid-cell."""
    while time.monotonic() < deadline:
        fresh = [(pid, ppid) for pid, ppid in workers_for(results) if pid not in seen]
        if fresh:
            pid, ppid = fresh[0]
            assert b"ray::" in Path(f"/proc/{ppid}/cmdline").read_bytes()  # a Ray worker of our cluster
            os.kill(ppid, signal.SIGKILL)
            seen.add(pid)
            return pid
        time.sleep(0.05)
    raise AssertionError("no bench worker started")


def wait_gone(results: Path, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while workers_for(results) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers_for(results), "a bench worker outlived its Ray worker"


@pytest.mark.slow
def test_same_cells_and_statuses_as_the_local_executor(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    lp = bench_run(SMOKE, local, *SUBSET)
    rp = bench_run(SMOKE, remote, *SUBSET, address=cluster)
    assert lp.returncode == rp.returncode == 0, lp.stdout + lp.stderr + rp.stdout + rp.stderr
    folder = Path("a100-80gb") / "smoke-cpu"
    lrecs, rrecs = records(local / folder), records(remote / folder)
    assert len(lrecs) == 4
    assert {k: r["status"] for k, r in rrecs.items()} == {k: r["status"] for k, r in lrecs.items()}
    for cid, rec in rrecs.items():
        assert set(rec) == set(lrecs[cid]) and rec["cell"] == lrecs[cid]["cell"]
        assert set(rec["measured"]) == set(lrecs[cid]["measured"])
        env = rec["environment"]
        assert env["executor"] == "ray" and env["ray_node_id"] and env["hostname"] and env["torch_version"]
    assert "done: 4 ok" in rp.stdout and f"ray: connected to {cluster}: 1 node, 2 CPU" in rp.stderr
    again = bench_run(SMOKE, remote, *SUBSET, address=cluster)  # resume: nothing left, Ray not even asked
    assert again.returncode == 0 and "4 already in" in again.stdout and "nothing to run" in again.stdout


@pytest.mark.slow
def test_a_cell_whose_ray_worker_dies_is_retried_once(cluster, write_matrix, tmp_path):
    results = tmp_path / "results"
    proc = bench_run(write_matrix(ONE_CELL), results, address=cluster, popen=True)
    seen: set[int] = set()
    first = kill_ray_worker_of_next_cell(results, seen, time.monotonic() + 120)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    (rec,) = records(results / "a100-80gb" / "one").values()
    assert rec["status"] == "ok" and rec["error"] is None
    assert first in seen  # its first Ray worker was killed mid-cell; the record is the retry's
    wait_gone(results)


@pytest.mark.slow
def test_a_cell_whose_ray_worker_dies_twice_is_an_error_with_the_reason(cluster, write_matrix, tmp_path):
    results = tmp_path / "results"
    proc = bench_run(write_matrix(ONE_CELL), results, address=cluster, popen=True)
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    kill_ray_worker_of_next_cell(results, seen, deadline)
    kill_ray_worker_of_next_cell(results, seen, deadline)  # the retry, on the only node there is
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    (rec,) = records(results / "a100-80gb" / "one").values()
    assert rec["status"] == "error" and rec["measured"] is None
    assert rec["error"].startswith(
        "ray: the cell's Ray worker or node died (retried once, then given up): WorkerCrashedError"
    )
    assert "done: 1 error" in out
    wait_gone(results)
    retry = bench_run(write_matrix(ONE_CELL), results, "--retry-failed", address=cluster)
    assert retry.returncode == 0 and "done: 1 ok" in retry.stdout, retry.stdout + retry.stderr


@pytest.mark.slow
def finished_files(folder):
    """Finished record files (not a record being written: ``.tmp-*`` until its rename)."""
    return [f for f in folder.glob("*.json") if not f.name.startswith(".tmp")]


def test_ctrl_c_cancels_the_rest_and_keeps_finished_records(cluster, write_matrix, tmp_path):
    results = tmp_path / "results"
    folder = results / "a100-80gb" / "four"
    proc = bench_run(write_matrix(FOUR_CELLS), results, address=cluster, popen=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not finished_files(folder):
        time.sleep(0.05)
    before = {f.name: f.read_bytes() for f in finished_files(folder)}
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "error: interrupted" in out, out
    assert 1 <= len(before) < 4
    after = {f.name: f.read_bytes() for f in finished_files(folder)}
    assert {k: after[k] for k in before} == before  # finished records kept, untouched
    wait_gone(results)  # the cancelled cells' workers are gone
    time.sleep(2)
    assert {f.name for f in finished_files(folder)} == set(after)  # nothing finished after the cancel
    rest = bench_run(write_matrix(FOUR_CELLS), results, address=cluster)
    assert rest.returncode == 0 and f"{len(after)} already in" in rest.stdout, rest.stdout + rest.stderr
    assert {r["status"] for r in records(folder).values()} == {"ok"} and len(records(folder)) == 4


@pytest.mark.slow
def test_require_gpu_type_asks_for_the_matrix_gpu_label(cluster, write_matrix, tmp_path):
    results = tmp_path / "results"
    proc = bench_run(write_matrix(ONE_CELL), results, "--require-gpu-type", address=cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = records(results / "a100-80gb" / "one").values()
    assert rec["status"] == "ok" and rec["environment"]["ray_accelerator_type"] == FAKE_LABEL
    assert "note:" not in proc.stderr  # the cluster has the precise label: nothing to warn about


@pytest.mark.slow
def test_a_gpu_type_no_node_has_waits_with_a_note_until_ctrl_c(cluster, write_matrix, tmp_path):
    results, log = tmp_path / "results", tmp_path / "out.txt"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        str(write_matrix(ONE_CELL.replace("a100-80gb", "h100-80gb"))),
        "--device",
        "cpu",
        "--results",
        str(results),
        "--executor",
        "ray",
        "--address",
        cluster,
        "--require-gpu-type",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **NO_AUTH}, stdout=out, stderr=subprocess.STDOUT)
        note = "note: no node has accelerator_type H100 now; such cells wait until one joins (Ctrl-C stops)"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and note not in log.read_text() and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1)  # queued in Ray, not failed
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()
    assert note in log.read_text()
    assert not list(results.rglob("*/one/*.json"))
