"""Kiln benchmark: a model x precision x batch matrix, Kiln and its peers measured in one run.

    python3 bench/run.py --out results/            # the target rows, FP16 (~9 minutes on an H100)
    python3 bench/run.py --full --out results/     # every model, FP32 and FP16, batch 1 and 32
    python3 bench/run.py --quick                   # one small row, a fast check

Systems per row: eager PyTorch, torch.compile (default mode), torch.compile(mode=
"reduce-overhead") and Kiln (kiln.compile; FP16 rows: model.half() and enabled_precisions=
{torch.float16}; FP32 rows: TF32 off everywhere unless --tf32). Per system: median latency (CUDA
events, each timed run synchronized, warm-up first, inputs rotated among a few pre-made input
sets), throughput, peak GPU memory (resident state + inference), compile/build time; for Kiln
also the max abs error and cosine similarity against FP32 eager PyTorch (the truth for FP16 rows
too). See bench/README.md for the method, the memory accounting and the time budgets.

Output (in --out): results.json, results.md (the tables printed last) and results.png.
Exit status 0 when every row ran: eager and Kiln measured and no system failed (a torch.compile
cell skipped by the time budget is not a failure; it is marked in the table).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as zoo  # noqa: E402 (bench/models.py, next to this file)
from models import compare, first_tensor  # noqa: E402

from kiln.runner import GPU_LOCK_ENV, gpu_turn, hardware_name, shared_gpu_env, source_commit  # noqa: E402

SYSTEMS = ("eager", "compile", "reduce_overhead", "torchao", "kiln")
PEERS = ("eager", "compile", "reduce_overhead", "torchao")
LABELS = {
    "eager": "eager",
    "compile": "torch.compile",
    "reduce_overhead": "compile r-o",
    "torchao": "torchao int8 r-o",
    "kiln": "Kiln",
}
SHORT = {"eager": "eager", "compile": "compile", "reduce_overhead": "r-o", "torchao": "torchao"}
ALL_MODELS = ("resnet50", "mobilenet_v3_large", "vit_b_16", "bert", "gpt2")
DEFAULT = dict(models="resnet50,bert,vit_b_16", precisions="fp16", batches="1,32", deadline=520.0)
FULL = dict(models=",".join(ALL_MODELS), precisions="fp32,fp16", batches="1,32", deadline=0.0)
QUICK = dict(models="mobilenet_v3_large", precisions="fp16", batches="1", deadline=120.0)
# Plans saved for inspection (--plans): the FP16 target rows.
PLAN_ROWS = {(m, "fp16", b) for m in ("resnet50", "bert", "vit_b_16") for b in (1, 32)}
NUM_INPUT_SETS = 3
ERROR_CHARS = 200


# ---- results -------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One system on one row. status: "ok", "error" (message in error) or "skipped" (why)."""

    status: str = "skipped"
    error: str = ""
    latency_ms: float | None = None  # median
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    throughput: float | None = None  # items/s at the median latency
    peak_mem_mib: float | None = None
    compile_s: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    model: str
    precision: str
    batch: int
    systems: dict[str, Measurement] = field(
        default_factory=lambda: {s: Measurement() for s in SYSTEMS}
    )
    max_abs_err: float | None = None  # Kiln vs FP32 eager
    cosine: float | None = None
    eager_max_abs_err: float | None = None  # eager at this precision vs FP32 eager (for scale)
    eager_cosine: float | None = None

    def speedup(self, peer: str) -> float | None:
        k, p = self.systems["kiln"], self.systems[peer]
        if k.latency_ms and p.latency_ms:
            return p.latency_ms / k.latency_ms
        return None

    def ran(self) -> bool:
        """Eager and Kiln measured, and no system failed (torchao, an optional package whose
        failures say nothing of Kiln, aside: its error is in the row's notes)."""
        ok = all(self.systems[s].status == "ok" for s in ("eager", "kiln"))
        return ok and not any(
            m.status == "error" for n, m in self.systems.items() if n != "torchao"
        )


# ---- statistics and numerics ----------------------------------------------------------------


def summarize(times_ms: Sequence[float], batch: int) -> dict:
    """Median, 10th/90th percentile latency (ms) and the throughput (items/s) at the median."""
    if not times_ms:
        raise ValueError("no timed runs")
    ordered = sorted(times_ms)
    median = statistics.median(ordered)

    def pct(p: float) -> float:
        k = (len(ordered) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return dict(
        latency_ms=median,
        latency_p10_ms=pct(0.1),
        latency_p90_ms=pct(0.9),
        throughput=batch * 1000.0 / median if median > 0 else float("inf"),
    )


# ---- timing ---------------------------------------------------------------------------------


def time_runs(
    fn: Callable,
    input_sets: Sequence[tuple],
    runs: int,
    warmup: int,
    device: torch.device,
    before_timing: Callable[[], None] | None = None,
) -> list[float]:
    """Per-run latency in ms. CUDA: events around each call, synchronized after each run, so a
    run's time is its whole latency (launches included), not overlapped with the next one.
    Inputs rotate among the pre-made sets. `before_timing` runs between warm-up and timing."""
    with torch.no_grad():
        for i in range(warmup):
            fn(*input_sets[i % len(input_sets)])
        if before_timing is not None:
            before_timing()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            for i in range(runs):
                args = input_sets[i % len(input_sets)]
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for i in range(runs):
                args = input_sets[i % len(input_sets)]
                t0 = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure(
    fn: Callable,
    input_sets: Sequence[tuple],
    batch: int,
    runs: int,
    warmup: int,
    device: torch.device,
    baseline_bytes: int = 0,
) -> Measurement:
    """Times fn and records its GPU memory through torch's allocator (bench/README.md, "Peak
    memory"), in two parts that are each >= 0 by construction:

    - resident: what the allocator held when the timed runs began (after the warm-up) above
      `baseline_bytes` (baseline(): the row's input sets alone): the system's weights and the
      state it keeps between calls (Kiln's constants, activation arena and workspace; CUDA-graph
      pools; cuBLAS workspaces its warm-up created);
    - inference: the most the allocator held above that during the timed runs (activations and
      outputs, transient workspaces), after reset_peak_memory_stats() at their start.

    peak_mem_mib = resident + inference: the system's own peak footprint during inference."""
    m = Measurement(status="ok")
    start = {}

    def before_timing() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start["bytes"] = torch.cuda.memory_allocated(device)

    times = time_runs(fn, input_sets, runs, warmup, device, before_timing)
    for k, v in summarize(times, batch).items():
        setattr(m, k, v)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        inference = torch.cuda.max_memory_allocated(device) - start["bytes"]
        resident = start["bytes"] - baseline_bytes
        if resident < 0:
            # Memory counted in the baseline was freed by the system's setup (baseline() clears
            # what it knows of, e.g. cuBLAS workspaces): say so rather than report less.
            m.extra["baseline_freed_mib"] = -resident / 2**20
            resident = 0
        m.peak_mem_mib = (resident + inference) / 2**20
        m.extra["resident_mib"] = resident / 2**20
        m.extra["inference_mib"] = inference / 2**20
    return m


def baseline(device: torch.device) -> int:
    """What torch's allocator holds with nothing but the row's input sets on the GPU: measured
    after free_memory(), so no earlier system's leftovers (or shared cuBLAS workspaces, which a
    later system may free) are counted in it."""
    if device.type != "cuda":
        return 0
    free_memory(device)
    return torch.cuda.memory_allocated(device)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (what eager and torch.compile keep resident)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# ---- models and inputs ----------------------------------------------------------------------


def make_input_sets(entry, batch: int, device: torch.device, precision: str) -> list[tuple]:
    """NUM_INPUT_SETS input tuples: the zoo's inputs first, then fresh random ones like them.
    Floating inputs are cast to the row's precision; token ids stay int64."""
    first = entry.inputs(batch, torch.device("cpu"))
    sets = [first]
    for k in range(1, NUM_INPUT_SETS):
        g = torch.Generator().manual_seed(100 + k)
        item = []
        for t in first:
            if t.is_floating_point():
                item.append(torch.randn(t.shape, generator=g, dtype=t.dtype))
            else:
                high = max(int(t.max()) + 1, 1)
                item.append(torch.randint(0, high, t.shape, generator=g, dtype=t.dtype))
        sets.append(tuple(item))
    dtype = _dtype(precision)
    return [
        tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in s)
        for s in sets
    ]


def truncate(text: str, n: int = ERROR_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def free_memory(device: torch.device) -> None:
    """Collects garbage and returns the caching allocator's free blocks to the device. cuBLAS
    workspaces (allocated through torch's allocator by the first matmul on a stream and kept)
    are dropped too: CUDA-graph capture (reduce-overhead) drops them itself, so left in a
    baseline they would be subtracted from a system that never held them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        torch.cuda.empty_cache()


def device_used_bytes(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return total - free


# ---- Kiln -----------------------------------------------------------------------------------


def engine_plans(compiled) -> list:
    """The kiln.Plan of every engine in a module from kiln.compile (kiln.plans)."""
    import kiln

    return kiln.plans(compiled)


def refit_ms(compiled, model, device: torch.device, repeats: int = 3) -> float:
    """Median milliseconds of kiln.refit(compiled, new weights): the model's state dict with
    every float tensor changed, on `device` (where a training loop keeps its weights)."""
    import kiln

    state = {}
    for name, t in model.state_dict().items():
        t = t.to(device)
        if t.is_floating_point():
            noise = torch.randn_like(t) * 0.01
            t = t.abs() + noise.abs() if "running_var" in name else t + noise
        state[name] = t
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        kiln.refit(compiled, state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def plan_costs(plans: Sequence, latency_ms: float | None) -> dict:
    """The roofline figures of one inference (kiln.roofline's cost model summed over the engines at
    their profiles' opt shapes, the compile inputs' shapes): GFLOP and MB moved, and the achieved
    TFLOP/s and GB/s at the measured latency (work outside the engines is not in them)."""
    import kiln

    flops = nbytes = 0.0
    for plan in plans:
        info = kiln.inspect(plan).costs()
        flops += info.total_flops or 0.0
        nbytes += info.total_bytes or 0.0
    out = {"gflop": flops / 1e9, "mb_moved": nbytes / 1e6}
    if latency_ms:
        out["tflops"] = flops / (latency_ms * 1e9)
        out["gbps"] = nbytes / (latency_ms * 1e6)
    return out


def plan_load_ms(plans: Sequence, device: str, repeats: int = 3) -> float:
    """Loading the engines from their serialized plans on `device` ("cuda" or "cpu"):
    Plan.deserialize and Engine creation (constants uploaded, kernels created), best of
    `repeats`, all engines together."""
    from kiln import _C
    from kiln.dtypes import backend_name

    blobs = [p.serialize() for p in plans]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engines = [_C.Engine(_C.Plan.deserialize(b), backend_name(device)) for b in blobs]
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del engines
    return best * 1e3


def plan_device_bytes(plans: Sequence) -> int:
    """What the engines hold outside torch's allocator by their plans: constants, and per
    execution context one activation arena and one workspace."""
    total = 0
    for p in plans:
        mem = p.memory
        total += mem["constant_bytes"] + mem["arena_bytes"] + mem["workspace_bytes"]
    return total


def run_kiln(row: Row, model, input_sets, truth, args, device, base: int, plans_dir) -> None:
    """Compiles `model` (on the GPU) with Kiln, moves the source model off the GPU and measures
    the compiled one. The source model is back on the CPU afterwards."""
    import kiln

    precisions = {row.precision}
    if row.precision == "fp32" and args.tf32:
        precisions.add("tf32")
    options = {}
    if row.precision in ("fp8", "int8"):
        # FP8 GEMMs / INT8 layers in an FP16 model, calibrated (minmax: the amax, and random
        # weights and inputs have no outliers to clip) on the row's input sets; the compile time
        # includes the calibration.
        precisions.add("fp16")
        options["calibrator"] = kiln.Calibrator([tuple(s) for s in input_sets], algorithm="minmax")
    model.to(device)
    free_memory(device)
    used_before = device_used_bytes(device) if device.type == "cuda" else 0
    reserved_before = torch.cuda.memory_reserved(device) if device.type == "cuda" else 0
    t0 = time.perf_counter()
    compiled = kiln.compile(
        model,
        list(input_sets[0]),
        enabled_precisions=precisions,
        device=device.type,
        cache_dir=False,  # a build, not an engine cache hit
        **options,
    )
    compile_s = time.perf_counter() - t0
    try:
        report = compiled.report
        plans_error = ""
        try:
            plans = engine_plans(compiled)
        except Exception as e:  # noqa: BLE001 (only the plan-based memory figure is lost)
            plans, plans_error = None, truncate(str(e))
        wanted = args.all_plans or (row.model, row.precision, row.batch) in PLAN_ROWS
        if plans and plans_dir is not None and wanted:
            plans_dir.mkdir(parents=True, exist_ok=True)
            for k, plan in enumerate(plans):
                name = f"{row.model}_{row.precision}_b{row.batch}_engine{k}.plan"
                plan.save(str(plans_dir / name))
        # Only Kiln's own state stays on the GPU while it runs: the source model leaves.
        model.cpu()
        with torch.no_grad():
            out = first_tensor(compiled(*input_sets[0]))
        free_memory(device)
        external = 0
        shared = bool(os.environ.get(GPU_LOCK_ENV))  # --jobs: other workers allocate too
        if device.type == "cuda" and not shared:
            # Device memory that appeared outside torch's caching allocator since before the
            # compile. The runtime allocates the engines' constants, arenas and workspaces through
            # torch's allocator (runtime/runtime.cpp), so this is what is left: library handles
            # (cuDNN, cuBLASLt) and loaded kernel code, mostly once per process. Reported, not
            # added to the peak (eager's own handles are not counted either).
            grown = device_used_bytes(device) - used_before
            torch_grown = torch.cuda.memory_reserved(device) - reserved_before
            external = max(0, grown - torch_grown)
        row.max_abs_err, row.cosine = compare(out, truth)
        del out
        result = measure(compiled, input_sets, row.batch, args.runs, args.warmup, device, base)
        result.compile_s = compile_s
        result.extra["external_mib"] = None if shared else external / 2**20
        result.extra.update(
            engines=report.num_engines,
            fallbacks=len(report.fallbacks),
            fallback_ops=sorted({f.target for f in report.fallbacks})[:10],
            plan_device_mib=plan_device_bytes(plans) / 2**20 if plans is not None else None,
            weights_mib=(
                sum(p.memory["constant_bytes"] for p in plans) / 2**20
                if plans is not None
                else None
            ),
        )
        if plans_error:
            result.extra["plans_error"] = plans_error
        if plans:
            result.extra["load_ms"] = plan_load_ms(plans, device.type)
            result.extra.update(plan_costs(plans, result.latency_ms))
        if row.model in args.warm_build:
            # The same build again: the timing cache now holds every tactic timing it needs.
            model.to(device)
            t0 = time.perf_counter()
            kiln.compile(
                model,
                list(input_sets[0]),
                enabled_precisions=precisions,
                device=device.type,
                cache_dir=False,
                **options,
            )
            result.extra["warm_build_s"] = time.perf_counter() - t0
            model.cpu()
        if row.precision not in ("fp8", "int8"):  # calibrated weights do not refit (docs/refit.md)
            result.extra["refit_ms"] = refit_ms(compiled, model, device)
        row.systems["kiln"] = result
    finally:
        del compiled
        model.cpu()
        free_memory(device)


# ---- the matrix -----------------------------------------------------------------------------


class Budget:
    """The run's deadline and each model's torch.compile budget. A torch.compile cell starts
    only when its estimated compile time (the model's last one, or 30 s) still fits both."""

    def __init__(self, deadline_s: float, per_model_s: float):
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.per_model_s = per_model_s
        self.spent: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, model: str, estimate: float | None = None) -> str | None:
        """None when the next step fits, else why not."""
        est = estimate if estimate is not None else self.last.get(model, 30.0)
        if self.deadline_s and self.elapsed() + est > self.deadline_s:
            return f"time budget: the run's deadline ({self.deadline_s:.0f} s)"
        if self.per_model_s and self.spent.get(model, 0.0) + est > self.per_model_s:
            return f"time budget: {self.per_model_s:.0f} s of torch.compile per model"
        return None

    def charge(self, model: str, seconds: float) -> None:
        self.spent[model] = self.spent.get(model, 0.0) + seconds
        self.last[model] = seconds


def _cast(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model at a row's precision, on the CPU (a copy for FP16: the FP32 weights stay)."""
    dtype = _dtype(precision)
    return copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model


def _dtype(precision: str) -> torch.dtype:
    """The dtype of a row's model and inputs (kiln.dtypes' table: fp16 -> torch.float16)."""
    from kiln.dtypes import precision_dtype, torch_dtype

    if precision == "int8":  # INT8 layers inside a float16 model
        return torch.float16
    return torch_dtype(precision_dtype(precision))


def _on(input_set: list[tuple], device: torch.device) -> list[tuple]:
    return [tuple(t.to(device) for t in s) for s in input_set]


def _error(e: BaseException, verbose: bool) -> Measurement:
    if verbose:
        traceback.print_exc()
    return Measurement("error", truncate(f"{type(e).__name__}: {e}"))


def run_matrix(
    entries: Sequence,
    precisions: Sequence[str],
    batches: Sequence[int],
    args,
    device: torch.device,
    log: Callable[[str], None] = print,
    progress: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Runs the matrix. Pass 1, per model: FP32 truth, eager and Kiln for every row. Pass 2:
    torch.compile and reduce-overhead, while the time budget allows (they compile slowest).
    Only the measured system's weights and the row's input sets are on the GPU at a time.
    `progress` gets the rows so far after every cell (a --jobs worker writes them out)."""
    budget = Budget(args.deadline, args.compile_budget)
    rows: dict[tuple, Row] = {}
    plans_dir = Path(args.plans) if args.plans else None
    bases = {}
    for entry in entries:
        base = bases[entry.name] = entry.build().eval()
        truths = {}
        base.to(device)
        with gpu_turn(), torch.no_grad(), zoo.torch_tf32(False):  # strict FP32, as Kiln's FP32
            for batch in batches:
                x = _on(make_input_sets(entry, batch, torch.device("cpu"), "fp32")[:1], device)
                truths[batch] = first_tensor(base(*x[0])).float().cpu()
                del x
        base.cpu()
        free_memory(device)
        for precision in precisions:
            model = _cast(base, precision)
            with zoo.torch_tf32(precision == "fp32" and args.tf32):
                for batch in batches:
                    row = rows[(entry.name, precision, batch)] = Row(entry.name, precision, batch)
                    _eager_and_kiln(
                        row, entry, model, truths[batch], args, device, budget, plans_dir, log
                    )
                    if progress is not None:
                        progress(list(rows.values()))
            del model

    # torch.compile cells in the order batch, mode, model, precision: within the time budget,
    # every model gets its first cells before any model gets its last.
    peers = not args.skip_peers and device.type == "cuda"
    why_not = "--skip-peers" if args.skip_peers else "torch.compile runs on CUDA only"
    # torchao's INT8 (dynamic int8 activations, int8 weights, in its linear layers) under
    # reduce-overhead: the INT8 rows' own peer.
    modes = (
        ("compile", None),
        ("reduce_overhead", "reduce-overhead"),
        ("torchao", "reduce-overhead"),
    )
    for batch in batches:
        for system, mode in modes:
            for entry in entries:
                for precision in precisions:
                    row = rows[(entry.name, precision, batch)]
                    why = why_not if not peers else budget.allows(entry.name)
                    if system == "torchao":
                        why = torchao_unavailable(precision) or why
                    if why:
                        row.systems[system] = Measurement("skipped", why)
                        continue
                    model = _cast(bases[entry.name], precision)
                    if system == "torchao":
                        try:
                            model = torchao_int8(model, device)
                        except Exception as e:  # noqa: BLE001 (the peer's failure is reported)
                            row.systems[system] = _error(e, args.verbose)
                            continue
                    cpu = torch.device("cpu")
                    input_sets = _on(make_input_sets(entry, batch, cpu, precision), device)
                    log(f"[{budget.elapsed():6.1f}s] {entry.name} {precision} b{batch}: {system}")
                    with zoo.torch_tf32(precision == "fp32" and args.tf32):
                        row.systems[system] = run_torch_compile(
                            model,
                            mode,
                            input_sets,
                            batch,
                            args,
                            device,
                            budget,
                            entry.name,
                            offload=system != "torchao",
                        )
                    del model, input_sets
                    free_memory(device)
                    if progress is not None:
                        progress(list(rows.values()))
    return list(rows.values())


# ---- --jobs: the matrix in worker processes that take turns on the GPU ---------------------

WORKER = [sys.executable, str(Path(__file__).resolve())]  # how a worker is started (tests: a stub)
KILL_GRACE_S = 60.0  # a worker this far past the deadline (a build started late) is killed


def rows_from_json(path: Path) -> list[Row]:
    """The rows of a results.json (write_json), as Row objects."""
    rows = []
    for r in json.loads(path.read_text())["rows"]:
        systems = {n: Measurement(**m) for n, m in r["systems"].items()}
        keep = {k: r[k] for k in ("model", "precision", "batch", "max_abs_err", "cosine")}
        keep.update(eager_max_abs_err=r["eager_max_abs_err"], eager_cosine=r["eager_cosine"])
        rows.append(Row(**keep, systems=systems))
    return rows


def _worker_argv(args, model: str, precision: str, batches, out: Path, left: float) -> list[str]:
    argv = ["--worker", "--models", model, "--precisions", precision, "--out", str(out)]
    argv += ["--batches", ",".join(str(b) for b in batches)]
    argv += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--device", args.device]
    argv += ["--deadline", f"{max(left, 1.0):.0f}" if args.deadline else "0"]
    argv += ["--compile-budget", str(args.compile_budget or 0)]
    argv += ["--warm-build", ",".join(sorted(args.warm_build))]
    argv += ["--plans", args.plans] if args.plans else []
    flags = ("all_plans", "skip_peers", "tf32", "verbose")
    return argv + [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f)]


def merge(paths: Sequence[str], out: Path) -> int:
    """`--merge A/results.json B/results.json ...`: the rows of several runs (a matrix split over
    GPU calls) as one table, JSON and chart in `out`, in the order given; a later run's row
    replaces an earlier one of the same model, precision and batch. The roofline table uses the
    first run's measured peaks and says so. Exit status as a run's: 0 when every row ran."""
    from kiln.roofline import Peaks

    rows: dict[tuple, Row] = {}
    metas, peaks, peaks_from = [], None, "this run"
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            got = rows_from_json(Path(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"bench: cannot merge {path}: {e}", file=sys.stderr)
            return 2
        metas.append(data.get("meta", {}))
        if peaks is None and metas[-1].get("peaks"):
            peaks, peaks_from = Peaks(**metas[-1]["peaks"]), f"the run of {path}"
        for r in got:
            rows[(r.model, r.precision, r.batch)] = r
    merged = list(rows.values())
    meta = {"merged": list(paths), "runs": metas}
    table = write_outputs(merged, out, meta, peaks, peaks_from)
    failed = [r for r in merged if not r.ran()]
    print(f"bench: {len(merged) - len(failed)}/{len(merged)} rows ran ({len(paths)} runs merged)")
    print()
    print(table)
    return 1 if failed else 0


def run_in_workers(
    entries: Sequence,
    precisions: Sequence[str],
    batches: Sequence[int],
    args,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """`--jobs N`: each model x precision of the matrix (all its batches) in a worker process of
    its own (this script with --worker), N at a time. The workers share the GPU in turns
    (kiln.runner.gpu_turn, a lock file named by KILN_GPU_LOCK): each timing, each Kiln build
    (its tactic timing) and each FP32 truth holds the GPU alone, while the other workers build
    models and compile torch.compile's cells on the CPU. A worker that fails or is killed past
    the deadline gives its rows an error or a skip. The rows come back in matrix order."""
    start = time.perf_counter()
    parts = Path(args.out) / "parts"
    units = [(e.name, p) for e in entries for p in precisions]
    lines = threading.Lock()  # the worker threads' lines, one at a time (print writes in parts)
    say = log

    def log(message: str) -> None:
        with lines:
            say(message)

    def missing(model: str, precision: str, status: str, why: str) -> list[Row]:
        rows = [Row(model, precision, b) for b in batches]
        for r in rows:
            for name in ("eager", "kiln"):
                r.systems[name] = Measurement(status, truncate(why))
        return rows

    def one(unit: tuple[str, str]) -> list[Row]:
        model, precision = unit
        elapsed = time.perf_counter() - start
        left = args.deadline - elapsed if args.deadline else 0.0
        if args.deadline and left <= 0:
            return missing(model, precision, "skipped", "time budget: the run's deadline")
        out = parts / f"{model}_{precision}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").unlink(missing_ok=True)  # an earlier run's rows are not this one's
        command = WORKER + _worker_argv(args, model, precision, batches, out, left)
        log(f"[{elapsed:6.1f}s] {model} {precision}: worker started")
        try:
            with open(out / "log.txt", "w") as f:
                done = subprocess.run(
                    command,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=left + KILL_GRACE_S if args.deadline else None,
                )
            status, why = "", ""
            log(
                f"[{time.perf_counter() - start:6.1f}s] {model} {precision}: worker exited "
                f"({done.returncode})"
            )
            if done.returncode != 0 or not (out / "results.json").exists():
                tail = (out / "log.txt").read_text().strip().splitlines()[-1:]
                status = "error"
                why = f"worker exited with status {done.returncode}: " + " ".join(tail)
        except subprocess.TimeoutExpired:
            log(f"[{time.perf_counter() - start:6.1f}s] {model} {precision}: worker killed")
            status, why = "skipped", "worker killed past the run's deadline"
        # What the worker measured (it writes its rows after every cell), and for the rest of
        # the unit's rows, why not.
        got = rows_from_json(out / "results.json") if (out / "results.json").exists() else []
        for row in got:
            for m in row.systems.values():
                if why and m.status == "skipped" and not m.error:  # a cell it never reached
                    m.status, m.error = status, truncate(why)
        have = {r.batch for r in got}
        rest = [r for r in missing(model, precision, status, why) if r.batch not in have]
        rows = sorted(got + rest, key=lambda r: list(batches).index(r.batch))
        for r in rows:  # a line per row as it comes: a call cut short still shows what ran
            cells = [f"{SHORT.get(n, n)} {_latency(m)}" for n, m in r.systems.items()]
            log(f"    {r.model} {r.precision} b{r.batch}: " + ", ".join(cells))
        return rows

    from concurrent.futures import ThreadPoolExecutor

    with shared_gpu_env(args.jobs, "kiln_bench_gpu_") as env, ThreadPoolExecutor(args.jobs) as pool:
        return [r for rows in pool.map(one, units) for r in rows]


def torchao_unavailable(precision: str) -> str | None:
    """Why a row has no torchao peer (None when it has one)."""
    if precision != "int8":
        return "int8 rows only"
    try:
        import torchao.quantization  # noqa: F401
    except Exception as e:  # noqa: BLE001 (not installed, or built for another torch)
        return truncate(f"torchao does not import: {e}")
    return None


def torchao_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` (a copy) with torchao's INT8 in its linear layers (Int8DynamicActivationInt8Weight:
    activations quantized per token at run time, weights per channel), on `device`. torchao
    quantizes linear layers only: convolutions stay as they are."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model).to(device)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def _eager_and_kiln(row: Row, entry, model, truth, args, device, budget, plans_dir, log) -> None:
    """Pass 1 of one row: eager, then Kiln, on the same input sets and baseline."""
    cpu = torch.device("cpu")
    input_sets = _on(make_input_sets(entry, row.batch, cpu, row.precision), device)
    base = baseline(device)
    log(f"[{budget.elapsed():6.1f}s] {entry.name} {row.precision} b{row.batch}: eager")
    try:
        model.to(device)
        with gpu_turn(), torch.no_grad():
            out = first_tensor(model(*input_sets[0]))
            row.eager_max_abs_err, row.eager_cosine = compare(out, truth)
            del out
            m = measure(model, input_sets, row.batch, args.runs, args.warmup, device, base)
        m.compile_s = 0.0
        m.extra["weights_mib"] = weight_bytes(model) / 2**20
        row.systems["eager"] = m
    except Exception as e:  # noqa: BLE001 (a failing row is reported, not fatal)
        row.systems["eager"] = _error(e, args.verbose)
    model.cpu()
    free_memory(device)
    why = budget.allows(entry.name, 0.0) if args.deadline else None
    if why:
        row.systems["kiln"] = Measurement("skipped", why)
        return
    log(f"[{budget.elapsed():6.1f}s] {entry.name} {row.precision} b{row.batch}: kiln")
    try:
        with gpu_turn():  # Kiln's build times tactics on the GPU
            run_kiln(row, model, input_sets, truth, args, device, base, plans_dir)
    except Exception as e:  # noqa: BLE001
        row.systems["kiln"] = _error(e, args.verbose)
        model.cpu()  # when kiln.compile itself raised
    del input_sets
    free_memory(device)


def run_torch_compile(
    model, mode, input_sets, batch, args, device, budget, name, offload=True
) -> Measurement:
    """torch.compile(model, mode=mode) with static shapes, measured like the others. The model
    is on the GPU only while this runs (`offload`: moved back to the CPU after; a throwaway
    copy, torchao's, is left to the caller to drop)."""
    import torch._dynamo

    torch._dynamo.reset()
    base = baseline(device)
    t0 = time.perf_counter()
    try:
        model.to(device)
        compiled = torch.compile(model, mode=mode, dynamic=False)
        with torch.no_grad():
            # Compiling happens on the first call; reduce-overhead records its CUDA graph in the
            # first few, so three calls count as the build.
            for i in range(3):
                compiled(*input_sets[i % len(input_sets)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - t0
        budget.charge(name, compile_s)
        with gpu_turn():
            m = measure(compiled, input_sets, batch, args.runs, args.warmup, device, base)
        m.compile_s = compile_s
        m.extra["weights_mib"] = weight_bytes(model) / 2**20
        del compiled
    except Exception as e:  # noqa: BLE001
        budget.charge(name, time.perf_counter() - t0)
        m = _error(e, args.verbose)
    finally:
        torch._dynamo.reset()
        if offload:
            model.cpu()
        free_memory(device)
    return m


# ---- output ---------------------------------------------------------------------------------


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _latency(m: Measurement) -> str:
    """A system's median latency for a progress line, or what happened instead."""
    return f"{m.latency_ms:.3f} ms" if m.status == "ok" and m.latency_ms else m.status


def _cell(m: Measurement, value) -> str:
    if m.status == "ok":
        return _fmt(value)
    return "skip" if m.status == "skipped" else "ERR"


def markdown(rows: Sequence[Row], peaks=None, peaks_from: str = "this run") -> str:
    """Two tables: latency with Kiln's speedups and accuracy; throughput, memory, build time; with
    `peaks` (kiln.roofline.Peaks) a third: each row's FLOPs, bytes and achieved rates."""
    lines = [
        "Median latency (ms), Kiln's speedup over each peer, Kiln's error vs FP32 eager:",
        "",
        "| model | prec | batch | "
        + " | ".join(LABELS[n] for n in SYSTEMS)
        + " | "
        + " | ".join(f"x {SHORT[p]}" for p in PEERS)
        + " | max abs err | cosine | notes |",
        "|---|---|---:|" + "---:|" * (len(SYSTEMS) + len(PEERS) + 2) + "---|",
    ]
    for r in rows:
        s = r.systems
        notes = []
        k = s["kiln"]
        if k.status == "ok":
            notes.append(
                f"{k.extra.get('engines')} engine(s), {k.extra.get('fallbacks')} fallback(s)"
            )
        for name in SYSTEMS:
            m = s[name]
            if m.status == "error" or (m.status == "skipped" and m.error.startswith("time")):
                notes.append(f"{LABELS[name]}: {m.error}")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.model,
                    r.precision,
                    str(r.batch),
                    *(_cell(s[n], s[n].latency_ms) for n in SYSTEMS),
                    *(_fmt(r.speedup(p), ".2f") + ("x" if r.speedup(p) else "") for p in PEERS),
                    _fmt(r.max_abs_err, ".2e"),
                    _fmt(r.cosine, ".6f"),
                    "; ".join(notes).replace("|", "/"),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Throughput (items/s), peak GPU memory during inference (MiB), compile/build time (s):",
        "",
        "| model | prec | batch | "
        + " | ".join(f"{LABELS[n]} items/s" for n in SYSTEMS)
        + " | "
        + " | ".join(f"{LABELS[n]} MiB" for n in SYSTEMS)
        + " | "
        + " | ".join(f"{LABELS[n]} build s" for n in SYSTEMS[1:])
        + " | Kiln warm build s | Kiln plan load ms | Kiln refit ms |",
        "|---|---|---:|" + "---:|" * (3 * len(SYSTEMS) + 2),
    ]
    for r in rows:
        s = r.systems
        cells = [r.model, r.precision, str(r.batch)]
        cells += [_cell(s[n], s[n].throughput) for n in SYSTEMS]
        cells += [_cell(s[n], s[n].peak_mem_mib) for n in SYSTEMS]
        cells += [_cell(s[n], s[n].compile_s) for n in SYSTEMS[1:]]
        k = s["kiln"]
        cells += [_cell(k, k.extra.get(key)) for key in ("warm_build_s", "load_ms", "refit_ms")]
        lines.append("| " + " | ".join(cells) + " |")
    if peaks is not None:
        lines += [
            "",
            f"Roofline of Kiln's inference (cost model: kiln.roofline; peaks measured in "
            f"{peaks_from}: {peaks}):",
            "",
            "| model | prec | batch | GFLOP | MB moved | Kiln ms | TFLOP/s | % of GEMM peak | "
            "GB/s | % of copy peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            k = r.systems["kiln"]
            if k.status != "ok" or "gflop" not in k.extra:
                continue
            tflops, gbps = k.extra.get("tflops"), k.extra.get("gbps")
            peak = peaks.float32_tflops if r.precision == "fp32" else peaks.fp16_tflops
            cells = [r.model, r.precision, str(r.batch), _fmt(k.extra["gflop"], ".3f")]
            cells += [_fmt(k.extra["mb_moved"], ".1f"), _fmt(k.latency_ms, ".3f")]
            cells += [_fmt(tflops, ".1f"), _fmt(tflops and 100 * tflops / peak, ".1f")]
            cells += [_fmt(gbps, ".0f"), _fmt(gbps and 100 * gbps / peaks.gbps, ".1f")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: Path, meta: dict) -> None:
    data = {
        "meta": meta,
        "rows": [
            {
                **asdict(r),
                "speedup": {p: r.speedup(p) for p in PEERS},
                "ran": r.ran(),
            }
            for r in rows
        ],
    }
    path.write_text(json.dumps(data, indent=2, default=str))


def write_chart(rows: Sequence[Row], path: Path) -> None:
    """Grouped bars: median latency per row and system (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.model}\n{r.precision} b{r.batch}" for r in rows]
    width = 0.8 / len(SYSTEMS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    drawn = 0
    for k, name in enumerate(SYSTEMS):
        xs, ys = [], []
        for i, r in enumerate(rows):
            m = r.systems[name]
            if m.status == "ok" and m.latency_ms:
                xs.append(i + (k - (len(SYSTEMS) - 1) / 2) * width)
                ys.append(m.latency_ms)
        ax.bar(xs, ys, width, label=LABELS[name])
        drawn += len(ys)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    if drawn:
        ax.set_ylabel("median latency (ms, log scale)")
        ax.set_yscale("log")
    else:  # every row failed: an empty chart that says so (log scale needs a value)
        ax.text(0.5, 0.5, "no system measured", ha="center", transform=ax.transAxes)
    ax.set_title("Kiln vs PyTorch: median latency (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    rows: Sequence[Row], out: Path, meta: dict, peaks=None, peaks_from: str = "this run"
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, peaks, peaks_from)
    write_json(rows, out / "results.json", meta)
    (out / "results.md").write_text(table + "\n")
    write_chart(rows, out / "results.png")
    return table


# ---- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", help=f"comma list (default {DEFAULT['models']}; zoo: bench/models.py)"
    )
    p.add_argument(
        "--precisions",
        help=f"fp32,fp16,fp8,int8 (fp8: FP8 GEMMs in the FP16 model, calibrated on the inputs; "
        f"int8: INT8 layers in the FP16 model, calibrated on the inputs; default "
        f"{DEFAULT['precisions']})",
    )
    p.add_argument("--batches", help=f"comma list (default {DEFAULT['batches']})")
    p.add_argument("--runs", type=int, default=100, help="timed runs per system (>= 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    p.add_argument("--out", default="bench_results", help="directory for results.{json,md,png}")
    p.add_argument(
        "--plans",
        help="save Kiln's resnet50/bert/vit_b_16 FP16 plans here (default OUT/plans)",
    )
    p.add_argument("--all-plans", action="store_true", help="save every row's plans (--plans)")
    p.add_argument("--full", action="store_true", help="every model, fp32+fp16, batch 1 and 32")
    p.add_argument(
        "--quick", action="store_true", help="one small row (mobilenet_v3_large fp16 b1)"
    )
    p.add_argument("--skip-peers", action="store_true", help="eager and Kiln only")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in FP32 rows (torch and Kiln)")
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds for the whole run; cells that would start past it are skipped "
        "(0: none; default 520, none with --full)",
    )
    p.add_argument(
        "--compile-budget",
        type=float,
        default=None,
        help="seconds of torch.compile compiling per model "
        "(0: none; default 150, none with --full)",
    )
    p.add_argument(
        "--warm-build",
        default="resnet50",
        help="models whose Kiln rows build a second time, with the timing cache the first build "
        "filled (comma list; '' for none)",
    )
    p.add_argument("--device", default="cuda", help="cuda, or cpu (Kiln's reference backend)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="model x precision units in this many worker processes at a time, which take turns "
        "on the GPU for every timing and Kiln build (bench/README.md)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one unit of --jobs
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        help="no run: these runs' results.json as one table in --out (a matrix split over calls)",
    )
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    args.warm_build = {m for m in args.warm_build.split(",") if m}
    preset = FULL if args.full else QUICK if args.quick else DEFAULT
    args.models = args.models or preset["models"]
    args.precisions = args.precisions or preset["precisions"]
    args.batches = args.batches or preset["batches"]
    if args.deadline is None:
        args.deadline = preset["deadline"]
    if args.compile_budget is None:
        args.compile_budget = 0.0 if args.full else 150.0
    if args.runs < 1:
        p.error("--runs must be positive")
    if args.plans is None:
        args.plans = str(Path(args.out) / "plans")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench: no CUDA GPU visible; use --device cpu (Kiln's CPU reference backend)",
            file=sys.stderr,
        )
        return 2
    try:
        entries, precisions = zoo.parse_matrix(args.models, args.precisions)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    bad = set(precisions) - {"fp32", "fp16", "fp8", "int8"}
    if bad:
        print(
            f"bench: unsupported precision(s) {sorted(bad)}; use fp32, fp16, fp8, int8",
            file=sys.stderr,
        )
        return 2
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.worker:  # one unit of a --jobs run: its rows, for the parent to merge
        Path(args.out).mkdir(parents=True, exist_ok=True)
        meta = {"argv": list(argv or sys.argv[1:])}

        def progress(rows: list[Row]) -> None:  # after every cell: a worker killed keeps them
            write_json(rows, Path(args.out) / "results.partial.json", meta)
            os.replace(Path(args.out) / "results.partial.json", Path(args.out) / "results.json")

        run_matrix(entries, precisions, batches, args, device, progress=progress)
        return 0
    peaks = None
    if device.type == "cuda":
        from kiln.roofline import measure_peaks

        with gpu_turn():  # once per run, alone on the GPU: the roofline table's denominators
            peaks = measure_peaks("cuda")
    if args.jobs > 1:
        rows = run_in_workers(entries, precisions, batches, args)
    else:
        rows = run_matrix(entries, precisions, batches, args, device)
    meta = {
        "device": hardware_name(device),
        "torch": torch.__version__,
        "source": source_commit(),
        "runs": args.runs,
        "warmup": args.warmup,
        "input_sets": NUM_INPUT_SETS,
        "tf32": args.tf32,
        "truth": "FP32 eager PyTorch (TF32 off), for FP16 rows too",
        "latency": "median of per-run CUDA event times, synchronized after each run",
        "memory": "through torch's allocator (Kiln's engines allocate through it): resident "
        "(allocated when the timed runs begin, minus the input sets alone) + inference "
        "(max_memory_allocated during the timed runs above that, after reset_peak_memory_stats)",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "jobs": args.jobs,
        "peaks": None if peaks is None else asdict(peaks),
        "roofline": "kiln.roofline's cost model of the engines (FLOPs, bytes of every layer's "
        "inputs and outputs) at the row's shapes, over Kiln's median latency",
    }
    table = write_outputs(rows, Path(args.out), meta, peaks)
    failed = [r for r in rows if not r.ran()]
    print(f"\nresults: {Path(args.out) / 'results.json'}, results.md, results.png")
    print(f"bench: {len(rows) - len(failed)}/{len(rows)} rows ran")
    print()
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
