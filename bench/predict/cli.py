"""The ``predict`` and ``plan`` verbs.

``bench predict --model M --method X --precision P --batch B --seq S --gpu G``
prints one cell's breakdown (``--json`` for the object, ``--gpu all`` for a
verdict on every catalog card, smallest fitting card first).
``bench plan MATRIX.yaml`` predicts every cell of a matrix: a table by default,
``--json`` for exactly one JSON array on stdout, ``-o FILE`` to also write the
plan in the format its suffix names (``.md``, ``.html``, ``.csv``, ``.json``). A cell that cannot be predicted carries ``"error"`` and
makes the exit code 2.

Both give the predicted speed beside the memory (``bench.predict.speed``:
step time, tokens/s, MFU; prefill and decode for generation), and with
``--tokens N`` (or ``--epochs E --dataset-tokens N``) the run's wall time and
price (``bench.predict.cost``; ``--price gpu=usd``, ``--prices FILE``).
``--gpu all`` then ranks the cards that fit by cost (``--rank``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable

from bench import cell as cellmod, clihelp, destination, progressbar, recipe as recipes
from bench.dtypes import GiB
from bench.errors import UserError

PREDICT_FIELDS = ("method",) + tuple(
    f for f in cellmod.FIELD_NAMES if f not in ("model", "gpu", "steps", "warmup", "label")
)
"""The cell fields ``predict`` takes as flags (``--batch`` ...); their help is the field's doc
(``bench.clihelp``). ``steps``, ``warmup`` and ``label`` change no prediction."""


def assumed(c, given: set[str]) -> dict:
    """The values that decide the prediction which neither a flag nor the ``--from`` file gave."""
    keys = ["method", "precision", "seq", "batch"]
    if c.trains:
        keys += ["grad_accum", "optimizer"]
    else:
        keys.append("new_tokens")
    if c.strategy != "none":
        keys.append("gpus")
    if recipes.trains_adapters(c):
        keys.append("lora_r")
    if c.head != "lm":
        keys.append("num_labels")
    method_given = given & {"method", "tuning", "strategy", "offload"}
    out = {}
    for k in keys:
        if k == "method":
            if not method_given:
                out[k] = c.method
        elif k not in given:
            out[k] = getattr(c, k)
    return out


def assumed_line(values: dict) -> str:
    if not values:
        return ""
    return "assumed: " + ", ".join(f"{k} {clihelp.show(v)}" for k, v in values.items()) + " (flags you did not give)"


def _cell_from_args(a: argparse.Namespace, gpu: str):
    """(cell, notes, assumed): the flags, over the job file of ``--from`` when given (a flag wins
    over the file), and the values neither gave (``assumed``)."""
    from bench import jobfile, matrix, models

    raw: dict = {}
    notes: list[str] = []
    given = {k for k in PREDICT_FIELDS if getattr(a, k) is not None}
    if a.from_file:
        job = jobfile.load(a.from_file)
        raw.update(job.fields)
        given |= set(job.fields)
        notes += job.notes
        if a.method is not None and a.method in cellmod.TUNINGS:  # e.g. lora over the file's ZeRO setup
            raw["tuning"] = a.method
            a.method = None
        elif a.method is not None:
            for k in ("tuning", "strategy", "offload"):
                raw.pop(k, None)
    model = a.model or raw.get("model")
    if not model:
        raise UserError("model: missing; give --model (the file names no model)")
    raw.update({"model": models.resolve(model).name, "gpu": gpu})
    for key in PREDICT_FIELDS:
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    c = cellmod.normalize(raw, "")
    guessed = assumed(c, given)
    problems = matrix.validate_cell(c)
    if problems:  # say so where the value at fault is one the user did not give
        raise UserError(
            *(
                f"{p} (assumed: {clihelp.flag(p.split(':')[0])} not given)" if p.split(":")[0] in guessed else p
                for p in problems
            )
        )
    if a.from_file and "seq" not in given:  # job: loaded above
        notes.append(f"{job.kind} file gives no sequence length: predicted at seq {c.seq} (--seq)")
    if a.from_file and c.strategy != "none" and "gpus" not in given:
        notes.append(
            f"the file does not say how many GPUs share the {c.strategy} run: predicted for gpus {c.gpus} (--gpus)"
        )
    return c, tuple(notes), guessed


def host_fits(p, host_memory: int) -> bool:
    """Whether a node's host RAM (all its ranks) fits the stated host size."""
    return p.host_node_bytes <= host_memory


def _host_verdict(p, host_memory: int | None) -> str:
    """Host RAM of a node (all its ranks) against the stated host size."""
    if host_memory is None:
        return ""
    need = p.host_node_bytes
    return f"  {100 * need / host_memory:.0f}% of {host_memory / GiB:.0f} GiB: {'fits' if host_fits(p, host_memory) else 'does NOT fit'}"


def speed_fields(
    c,
    calibration: dict | None = None,
    tokens: int | None = None,
    price_table: dict | None = None,
    host_memory: int | None = None,
) -> dict:
    """The predicted-speed keys of a cell's ``predicted`` object (and ``run`` for ``tokens``)."""
    from bench.predict import cost
    from bench.predict.speed import speed

    s = speed(c, calibration=calibration, host_memory=host_memory).to_dict()
    out = {k: s[k] for k in ("step_time_seconds", "tokens_per_second", "samples_per_second", "mfu")}
    if c.task == "infer":
        out.update(prefill_seconds=s["prefill_seconds"], decode_tokens_per_second=s["decode_tokens_per_second"])
    out["step_time_parts"] = s["parts"]
    out["time_figures"] = s["time_figures"]
    if tokens is not None:
        run = cost.run_cost(c, s["tokens_per_second"], tokens, price_table or cost.prices())
        out["run"] = run.to_dict() if run else None
    return out


def _speed_text(c, sp: dict) -> str:
    from bench.report.labels import duration

    if sp.get("step_time_seconds") is None:
        why = sp.get("time_figures") or ""
        return f"  speed: not modelled for this cell{': ' + why if why.startswith(('no ', 'not ')) else ''}\n"
    lines = []
    if c.task == "infer":
        lines.append(f"  {'prefill (time to first token)':<32} {sp['prefill_seconds']:8.4f} s")
        lines.append(f"  {'decode':<32} {sp['decode_tokens_per_second']:8.1f} tokens/s")
        lines.append(f"  {'whole generate()':<32} {sp['step_time_seconds']:8.3f} s  MFU {100 * sp['mfu']:.1f}%")
        moved = sp["step_time_parts"].get("transfers")
        if moved is not None:
            lines.append(f"  {'  of which copies over PCIe':<32} {moved:8.3f} s  (between cards, offloaded weights)")
    else:
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in sp["step_time_parts"].items() if v > 0)
        lines.append(f"  {'step time (optimizer step)':<32} {sp['step_time_seconds']:8.3f} s  ({parts})")
        lines.append(
            f"  {'throughput':<32} {sp['tokens_per_second']:8.0f} tokens/s"
            f"  {sp['samples_per_second']:.2f} samples/s  MFU {100 * sp['mfu']:.1f}%"
        )
    run = sp.get("run")
    if run:
        usd = f"  ${run['usd']:,.2f} at ${run['usd_per_hour']:.2f}/h" if run["usd"] is not None else "  (no price)"
        label = f"run of {run['tokens']:,} tokens"
        lines.append(f"  {label:<32} {duration(run['seconds']):>10}{usd}")
    return "\n".join(lines) + "\n"


def _run_args(a: argparse.Namespace) -> tuple[int | None, dict, dict | None]:
    """(tokens, price table, calibration) from the flags."""
    from bench.predict import cost
    from bench.predict.speed_figures import load_calibration

    tokens = cost.run_tokens(a.tokens, a.epochs, a.dataset_tokens)
    return tokens, cost.prices(a.price, a.prices), load_calibration(a.calibration)


def placement_note(p, offload: dict | None = None) -> str:
    """One line for a split cell: the bottleneck and the blocks of every card (and what the
    host holds: ``split.host_offload``)."""
    from bench.recipe import block_index

    spans = []
    for c in p.cards:
        blocks = [i for i in (block_index(m) for m in c["modules"]) if i is not None]
        span = f"{min(blocks)}-{max(blocks)}" if blocks else ("all" if "" in c["modules"] else "none")
        spans.append(f"card {c['index']} blocks {span} {c['peak_bytes'] / GiB:.2f} GiB")
    host = sum(1 for d in p.placement.values() if d == "cpu")
    nowhere = sum(1 for d in p.placement.values() if d == "disk")
    tail = (f"; {host} modules on the host{_offload_text(offload)}" if host else "") + (
        f"; {nowhere} modules fit on no card" if nowhere else ""
    )
    return f"split over {p.devices} cards, card {p.bottleneck} the bottleneck: " + ", ".join(spans) + tail


def _offload_text(offload: dict | None) -> str:
    if not offload:
        return ""
    share = f", {100 * offload['share']:.0f}% of the weights" if offload.get("share") is not None else ""
    seconds = offload.get("seconds")
    slower = f", copied over PCIe at every forward: +{seconds:.2f} s per generate()" if seconds is not None else ""
    return f" ({offload['bytes'] / GiB:.2f} GiB{share}{slower})"


def _cards_text(p) -> list[str]:
    """A split cell: every card's peak and what is placed on it, the bottleneck marked."""
    from bench.recipe import block_index

    lines = [f"  per card ({p.devices} x {p.gpu}; the breakdown above is card {p.bottleneck}'s, the bottleneck):"]
    for c in p.cards:
        blocks = [i for i in (block_index(m) for m in c["modules"]) if i is not None]
        span = f"blocks {min(blocks)}-{max(blocks)}" if blocks else "no blocks"
        others = [m for m in c["modules"] if block_index(m) is None]
        mark = "  <- bottleneck" if c["index"] == p.bottleneck else ""
        lines.append(
            f"    card {c['index']}: {c['peak_bytes'] / GiB:6.2f} GiB ({c['breakdown']['weights'] / GiB:.2f} weights, "
            f"{c['breakdown']['kv_cache'] / GiB:.2f} KV)  {'fits' if c['fits'] else 'does NOT fit'}"
            f"  {span}{(' + ' + ', '.join(others)) if others else ''}{mark}"
        )
    elsewhere = {d: [m for m, x in p.placement.items() if x == d] for d in ("cpu", "disk")}
    for d, mods in elsewhere.items():
        if mods:
            lines.append(f"    {'host (offloaded)' if d == 'cpu' else 'no room (disk)'}: {', '.join(mods)}")
    return lines


def _breakdown_text(c, p, host_memory: int | None = None) -> str:
    per = f", per GPU of {p.ranks}" if p.ranks > 1 else ""
    per = f", bottleneck card of {p.devices}" if p.cards else per
    lines = [f"{c.slug} on {p.gpu} ({p.capacity_bytes / GiB:.1f} GiB{per})"]
    for name, n in p.breakdown.items():
        lines.append(f"  {name.replace('_', ' '):<32} {n / GiB:8.2f} GiB")
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(
        f"  {'peak GPU memory (NVML, process)':<32} {p.peak_bytes / GiB:8.2f} GiB"
        f"  {100 * p.peak_bytes / p.capacity_bytes:.0f}% of {p.gpu}: {verdict}"
        f" ({p.headroom_bytes / GiB:+.2f} GiB headroom)"
    )
    lines.append(f"  {'torch max_memory_allocated':<32} {p.allocated_bytes / GiB:8.2f} GiB")
    if p.ranks > 1:
        lines.append(f"  {'host RAM per rank':<32} {p.host_bytes / GiB:8.2f} GiB")
        lines.append(f"  {'host RAM per node':<32} {p.host_node_bytes / GiB:8.2f} GiB{_host_verdict(p, host_memory)}")
    else:
        lines.append(f"  {'host RAM':<32} {p.host_bytes / GiB:8.2f} GiB{_host_verdict(p, host_memory)}")
    if p.cards:
        lines += _cards_text(p)
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


def _host_memory(a: argparse.Namespace) -> int | None:
    from bench.dtypes import parse_size

    return parse_size(a.host_memory, "--host-memory") if getattr(a, "host_memory", None) else None


def _with_timeline(c, path: str):
    """``predict(c)``, and its allocation timeline written to ``path`` as a CUDA memory snapshot."""
    import pickle

    from bench.predict import timeline

    snap, p = timeline.of_cell(c)
    out = destination.write_bytes(path, pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL), "--timeline")
    events = len(snap["device_traces"][0])
    print(
        f"wrote {out} (predicted allocator timeline, {events} events; open it in pytorch.org/memory_viz)",
        file=sys.stderr,
    )
    return p


def cmd_predict(a: argparse.Namespace) -> int:
    from bench import gpus
    from bench.predict import max_batch, predict, ranking

    tokens, table, calibration = _run_args(a)
    if a.gpu is None:
        if a.gpu_memory is None:
            raise UserError("gpu: missing; give --gpu (a catalog GPU or 'all'), or --gpu-memory SIZE for a custom card")
        a.gpu = gpus.CUSTOM
    host = _host_memory(a)
    if a.timeline is not None:
        if a.gpu == "all":
            raise UserError("--timeline: one card's run; allowed: with --gpu NAME, not --gpu all")
        destination.check_file(a.timeline, "--timeline")
    if a.gpu != "all":
        c, notes, assumed_values = _cell_from_args(a, gpus.resolve(a.gpu).name)
        if a.timeline is not None and c.split != "none":
            raise UserError(
                "--timeline: one card's run; allowed: a cell without split (each card is its own allocator)"
            )
        p = _with_timeline(c, a.timeline) if a.timeline is not None else predict(c, host)
        p = dataclasses.replace(p, notes=p.notes + notes)
        sp = speed_fields(c, calibration, tokens, table, host)
        out = {
            "label": c.label,
            "cell_id": c.cell_id,
            "cell": c.to_dict(),
            "assumed": assumed_values,
            "predicted": {**p.to_dict(), **sp},
        }
        if host is not None:
            out["predicted"]["host_fits"] = p.host_node_bytes <= host
        if a.max_batch:
            out["max_batch"] = max_batch(c)
        if a.json:
            print(json.dumps(out, indent=1))
            return 0
        if assumed_values:
            print(assumed_line(assumed_values))
        sys.stdout.write(_breakdown_text(c, p, host))
        sys.stdout.write(_speed_text(c, sp))
        if a.max_batch:
            print(f"  largest micro-batch that fits: {out['max_batch']}")
        return 0
    base, notes, assumed_values = _cell_from_args(a, "h200")
    ranked = ranking.rank_cards(base, a, tokens, table, calibration)
    if a.json:
        for r in ranked:  # the rows of ranking.rows, as bench serve answers them too
            if host is not None and r.get("predicted"):
                r["predicted"]["host_fits"] = r["predicted"]["host_node_bytes"] <= host
        print(json.dumps(ranked, indent=1))
        return 0
    if assumed_values:
        print(assumed_line(assumed_values))
    print(ranking.title(base, a.rank or ("cost" if tokens is not None else "memory"), tokens))
    print(ranking.table(ranked, a.max_batch, tokens, host))
    for n in notes:
        print(f"note: {n}")
    return 0


def plan_entries(
    m,
    want_max_batch: bool,
    tokens: int | None = None,
    price_table: dict | None = None,
    calibration: dict | None = None,
    jobs: int | None = None,
    on_entry: Callable[[dict], object] | None = None,
) -> list[dict]:
    """One JSON-ready entry per cell of a loaded matrix, in matrix order (``planner.entries``);
    ``on_entry`` is called with each as it is done (the progress bar)."""
    from bench.predict import planner

    notes = getattr(m, "notes", {})
    host = getattr(m, "host_memory", None)  # a matrix's stated host (or bench plan --host-memory)
    return planner.entries(m.cells, notes, want_max_batch, tokens, price_table, calibration, jobs, on_entry, host)


def cmd_plan(a: argparse.Namespace) -> int:
    from bench import destination, matrix
    from bench.predict import version
    from bench.report.render import plan_format_of, plan_record, render_plan

    fmt = None
    if a.output:
        destination.check_file(a.output)  # before any work: never fail after the table was shown
        fmt = plan_format_of(a.output)  # the suffix decides: .md, .html, .csv or .json
    host = _host_memory(a)
    overrides = list(a.overrides) + ([f"gpu={a.gpu}"] if a.gpu else []) + ([f"host_memory={host}"] if host else [])
    m = matrix.load(a.matrix, overrides)
    tokens, price_table, calibration = _run_args(a)
    with progressbar.bar(len(m.cells), f"plan {m.name}") as bar:
        entries = plan_entries(
            m, a.max_batch, tokens, price_table, calibration, getattr(a, "jobs", None), lambda e: bar.update(1)
        )
    entries = version.stamp(entries)
    records = [plan_record(c, e.get("predicted")) for c, e in zip(m.cells, entries)]
    title = f"Plan: {m.name} on {m.gpu}" + (
        f" ({round(m.host_memory / GiB, 1):g} GiB host RAM)" if m.host_memory else ""
    )
    if a.json:
        print(json.dumps(entries, indent=1))
    else:
        sys.stdout.write(render_plan(records, "md", title=title))
    if a.output:
        text = json.dumps(entries, indent=1) + "\n" if fmt == "json" else render_plan(records, fmt or "md", title=title)
        destination.write_text(a.output, text)
    for e in entries:
        for n in e.get("notes", []):
            print(f"note: cell {e['cell_id']} ({e['cell']['model']}): {n}", file=sys.stderr)
    errors = [e for e in entries if "error" in e]
    for e in errors:
        print(f"error: cell {e['cell_id']} ({e['cell']['model']}): {e['error']}", file=sys.stderr)
    return 2 if errors else 0


def register(sub) -> None:
    from bench import calibration
    from bench.predict import search

    search.register(sub)
    calibration.register(sub)
    p = sub.add_parser(
        "predict",
        help="predict one cell's peak GPU memory (a breakdown) and step time",
        description="""\
Predict one cell (model x method x precision x shape) on a GPU without one: the peak
GPU memory as NVML shows it, as a breakdown whose parts add up, host RAM, step time,
tokens/s and MFU; with --tokens N (or --epochs E --dataset-tokens N) the run's wall
time and price. A field you do not give takes its default, and the first line says
which ones were assumed. --gpu all: one row per catalog card.

examples:
  bench predict --model llama-3.1-8b --method lora --precision bf16 --seq 2048 --gpu 4090
  bench predict --model mistral-7b --method zero3-offload --precision bf16 --gpu all --max-batch
  bench predict --from tests/data/jobs/axolotl_qlora.yml --gpu a100-80gb""",
    )
    p.add_argument(
        "--model",
        help=f"the model. Allowed: {clihelp.allowed_text('model')}. [default: the --from file's model]",
    )
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="a DeepSpeed JSON, HF TrainingArguments JSON/YAML, axolotl or LLaMA-Factory YAML, accelerate config; "
        "flags win over it [default: none, flags only]",
    )
    p.add_argument(
        "--gpu",
        help=clihelp.field_help("gpu", "custom with --gpu-memory", "; or all: every card"),
    )
    p.add_argument("--method", metavar="METHOD", help=clihelp.method_help())
    clihelp.add_cell_flags(p, PREDICT_FIELDS[1:])
    p.add_argument(
        "--host-memory",
        metavar="SIZE",
        help="host RAM of one node (e.g. 256GiB): adds a host-RAM verdict beside the GPU's [default: no verdict]",
    )
    p.add_argument("--max-batch", action="store_true", help="also find the largest micro-batch that fits")
    p.add_argument("--json", action="store_true", help="print one JSON object (a list with --gpu all)")
    p.add_argument(
        "--timeline",
        metavar="FILE",
        help="also write the predicted allocator timeline as a CUDA memory snapshot (pickle; pytorch.org/memory_viz) "
        "[default: none]",
    )
    p.add_argument(
        "--rank",
        choices=("cost", "time", "memory"),
        default=None,
        help="--gpu all: order the cards that fit by cost, time or memory "
        "[cost with --tokens, else memory: the smallest card first]",
    )
    add_run_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "plan",
        help="predict every cell of a matrix (no GPU needed)",
        description="Predict the peak GPU memory and step time of every cell of MATRIX: a table on "
        "stdout (progress on stderr when it is a terminal), --json for one JSON array. A cell that "
        "cannot be predicted is named on stderr and makes the exit code 2.",
    )
    p.add_argument("matrix", help="matrix YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=clihelp.overrides_help())
    p.add_argument(
        "--gpu", help=f"target GPU of every cell. Allowed: {clihelp.allowed_text('gpu')} [default: the matrix's gpu]"
    )
    p.add_argument("--json", action="store_true", help="one JSON array on stdout")
    p.add_argument("--max-batch", action="store_true", help="add the largest micro-batch that fits")
    p.add_argument(
        "-o",
        "--output",
        help="also write the plan to this file: .md, .html, .csv or .json (by suffix) [default: stdout only]",
    )
    p.add_argument("--jobs", type=int, metavar="N", help="processes predicting at once [one per core]")
    p.add_argument(
        "--host-memory",
        metavar="SIZE",
        help="host RAM of one node (e.g. 64GiB), over the matrix's host_memory: a host-RAM verdict per cell, "
        "and split cells offload to it what fits on no card [default: the matrix's host_memory, else none]",
    )
    add_run_flags(p)
    p.set_defaults(func=cmd_plan)


def add_run_flags(p) -> None:
    """The flags that turn a speed into a run's time and price."""
    p.add_argument(
        "--tokens", type=int, metavar="N", help="tokens the run trains on: adds wall time and cost [default: none]"
    )
    p.add_argument(
        "--epochs", type=float, metavar="E", help="with --dataset-tokens: tokens = E x dataset tokens [default: none]"
    )
    p.add_argument("--dataset-tokens", type=int, metavar="N", help="tokens in one epoch of the dataset [default: none]")
    p.add_argument(
        "--price",
        action="append",
        metavar="GPU=USD",
        help="USD per GPU-hour of a card, repeatable [default: the catalog's indicative price]",
    )
    p.add_argument(
        "--prices", metavar="FILE", help="YAML/JSON mapping gpu: USD per GPU-hour [default: the catalog's prices]"
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="a bench calibrate profile for the card's speed figures [default: the catalog's fitted figures]",
    )
