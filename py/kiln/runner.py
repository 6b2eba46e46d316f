"""`kiln run MODEL`: build or load a model, run it on given or random inputs, and time it.

MODEL is an ONNX file, a Kiln plan (kiln.Plan.save), a module saved with Kiln engines in it
(kiln.save, either format), or an ordinary TorchScript / ExportedProgram file, which is compiled
with kiln.compile first. The same code serves ``kiln run`` and notebooks::

    from kiln.runner import load_model, benchmark
    model = load_model("model.onnx", shapes={"x": ((1, 3, 224, 224),) * 3}, precisions=["fp16"])
    result = benchmark(model, iterations=200)
    print(result.text())

and `kiln compare` (kiln/compare.py) runs the same loaded models against another runtime.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kiln import _C
from kiln._C import KilnError
from kiln.dtypes import device_name, precision_name

PLAN_MAGIC = b"KILNPLAN"


def model_kind(path: str) -> str:
    """ "onnx", "plan", "torchscript" or "exported_program" (the last two: torch archives, which
    may or may not hold Kiln engines)."""
    if not os.path.exists(path):
        raise KilnError(f"{path} does not exist")
    if zipfile.is_zipfile(path):
        from kiln.serialize import archive_format

        return archive_format(path)
    with open(path, "rb") as f:
        head = f.read(len(PLAN_MAGIC))
    if head == PLAN_MAGIC:
        return "plan"
    if path.endswith(".onnx") or head[:1] == b"\x08":  # ModelProto's first field, ir_version
        return "onnx"
    raise KilnError(
        f"{path} is neither an ONNX model, a Kiln plan (kiln.Plan.save), nor a torch archive "
        "(torch.jit.save, torch.export.save or kiln.save)"
    )


# ---- shapes ---------------------------------------------------------------------------------


def parse_shape_specs(items: Sequence[str]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """["x:1x3x224x224", "ids:1x16:8x128:32x512"] -> {name: (min, opt, max)} (a fixed shape is
    its own min, opt and max; "x=1x3x224x224" is accepted too)."""
    specs = {}
    for item in items or []:
        if "=" in item and ":" not in item:
            item = item.replace("=", ":", 1)
        parts = item.split(":")
        try:
            if len(parts) not in (2, 4) or not parts[0]:
                raise ValueError
            dims = [tuple(int(d) for d in p.lower().split("x")) if p else () for p in parts[1:]]
        except ValueError:
            raise ValueError(
                f"shape {item!r}: write NAME:DIMS or NAME:MIN:OPT:MAX with dims as 1x3x224x224"
            ) from None
        specs[parts[0]] = tuple(dims) * 3 if len(dims) == 1 else tuple(dims)
    return specs


def _fill_dims(
    name: str, shape: Sequence[int], specs: Mapping, batch: int | None
) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) of an input declared `shape` (-1: dynamic)."""
    if name in specs:
        return specs[name]
    if -1 not in shape:
        return (tuple(shape),) * 3
    if batch is not None and shape[0] == -1 and -1 not in shape[1:]:
        return (1, *shape[1:]), (batch, *shape[1:]), (batch, *shape[1:])
    raise KilnError(
        f"input {name!r} has dynamic dims {list(shape)}: give its shapes "
        f"(--shapes {name}:MIN:OPT:MAX, or {name}:DIMS), or --batch N for a dynamic first dim"
    )


# ---- inputs ---------------------------------------------------------------------------------


def random_input(dtype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random data of the right dtype and range: floats N(0, 1); integers in [0, 2) (valid as
    indices, token ids and masks); bools."""
    shape = tuple(shape)
    if dtype in ("float32", "float16", "bfloat16", "float64"):
        return rng.standard_normal(shape).astype(np.float32)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 2, shape).astype(np.dtype(dtype))


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """An .npz file's arrays by name (arr_0, arr_1, ... mean positional inputs)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---- the loaded model -----------------------------------------------------------------------


@dataclass
class Model:
    """A model ready to run: its inputs (name, dtype, (min, opt, max) shapes) and a call."""

    path: str
    kind: str  # onnx, plan, compiled (a saved module with engines), torchscript, exported_program
    device: str
    inputs: list[tuple[str, str, tuple[tuple[int, ...], ...]]]
    output_names: list[str]
    call: Callable[[dict], dict]  # {input name: torch tensor} -> {output name: torch tensor}
    build_s: float | None = None  # building the engine(s) (ONNX, or compiling a torch model)
    load_s: float | None = None  # loading the plan or module file
    engine: object = None  # kiln.Engine for ONNX models and plans
    contexts: list = field(default_factory=list)
    module: object = None  # the torch module for the other kinds
    plans: list = field(default_factory=list)
    network: object = None  # kiln.Network (ONNX models)
    marked: list[str] = field(default_factory=list)  # mark_all: the layer outputs added
    notes: list[str] = field(default_factory=list)

    def feed(self, given: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> dict:
        """Inputs at the opt shapes: `given` arrays by name (arr_0.. by position), else random."""
        rng = np.random.default_rng(seed)
        given = dict(given or {})
        feed = {}
        for k, (name, dtype, (_, opt, _)) in enumerate(self.inputs):
            a = given.pop(name, given.pop(f"arr_{k}", None))
            feed[name] = np.asarray(a) if a is not None else random_input(dtype, opt, rng)
        if given:
            raise KilnError(
                f"--inputs has arrays {sorted(given)} that are not inputs of the model "
                f"({[n for n, _, _ in self.inputs]})"
            )
        return feed


def _torch_feed(feed: Mapping[str, np.ndarray], dtypes: Mapping[str, str], device: str) -> dict:
    import torch

    out = {}
    for name, a in feed.items():
        t = torch.from_numpy(np.ascontiguousarray(a))
        want = dtypes.get(name)
        if want is not None and want != "float64":
            t = t.to(getattr(torch, want))
        out[name] = t.to(device)
    return out


def _engine_model(path, kind, engine, plan, device, build_s, load_s, specs, batch, network=None):
    from kiln.engine import Engine  # noqa: F401 (the type of `engine`)

    inputs = []
    for name in engine.input_names:
        dtype, dims = engine.binding(name)
        if -1 in dims and name not in specs and batch is None and plan.profiles:
            shapes = (tuple(plan.profiles[0][name][1]),) * 3  # the profile's opt shape
        else:
            shapes = _fill_dims(name, list(dims), specs, batch)
        inputs.append((name, dtype, shapes))
    ctx = engine.create_execution_context()

    def call(feed):
        return ctx.execute(feed)

    return Model(
        path=path,
        kind=kind,
        device=device,
        inputs=inputs,
        output_names=list(engine.output_names),
        call=call,
        build_s=build_s,
        load_s=load_s,
        engine=engine,
        contexts=[ctx],
        plans=[plan],
        network=network,
    )


def load_model(
    path: str | os.PathLike,
    *,
    shapes: Mapping | None = None,
    batch: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    device: str = "auto",
    calib: str | None = None,
    timing_cache: str | None = None,
    save_plan: str | None = None,
    pin_fp32: Sequence[str] = (),
    mark_all: bool = False,
) -> Model:
    """Builds or loads `path` for running (see the module docstring). shapes: {input name: (min,
    opt, max)} for dynamic inputs (the runs use opt); batch: the size of a dynamic first dim.
    precisions: besides fp32 ("tf32", "fp16", "bf16", "int8" with calib, "fp8"). calib: a folder of
    .npz files (one batch each) or one .npz, for INT8 / FP8 calibration. pin_fp32: layer names
    kept in float32. mark_all: ONNX models only, every layer's output becomes an output (for
    kiln compare --per-layer)."""
    import torch

    path = os.fspath(path)
    kind = model_kind(path)
    device = device_name(device, allow_auto=True, allow_index=False)
    if device == "auto":
        device = "cuda" if _C.cuda_device_count() > 0 else "cpu"
    specs = dict(shapes or {})
    precisions = [p if p in ("int8", "fp8") else precision_name(p) for p in precisions]
    if kind == "onnx":
        return _load_onnx(
            path,
            specs,
            batch,
            precisions,
            device,
            calib,
            timing_cache,
            save_plan,
            pin_fp32,
            mark_all,
        )
    if mark_all:
        raise KilnError("--per-layer needs an ONNX model (its layers are named on both sides)")
    if kind == "plan":
        if precisions != ["fp32"] or calib or pin_fp32:
            raise KilnError(
                "a plan is already built: precisions, --calib and --pin-fp32 are build options"
            )
        from kiln.engine import Engine

        t0 = time.perf_counter()
        plan = _C.Plan.load(path)
        engine = Engine(plan, device=device)
        load_s = time.perf_counter() - t0
        return _engine_model(path, kind, engine, plan, device, None, load_s, specs, batch)
    # torch archives: compiled (Kiln engines inside) or an ordinary model to compile
    import kiln

    t0 = time.perf_counter()
    if kind == "torchscript":
        module = torch.jit.load(path, map_location="cpu")
    else:
        from kiln.log import torch_noise_filtered

        if _has_engines_archive(path):
            module = kiln.load(path)
        else:
            with torch_noise_filtered():
                module = torch.export.load(path)
    load_s = time.perf_counter() - t0
    plans = kiln.plans(module) if not isinstance(module, torch.export.ExportedProgram) else []
    names, dtypes = _torch_input_names(module)
    unknown = [n for n in specs if n not in names]
    if unknown and len(specs) == len(names):  # shapes named otherwise: taken in order
        specs = dict(zip(names, specs.values(), strict=True))
    elif unknown:
        raise KilnError(f"--shapes names {unknown}; the model's inputs are {names}")
    build_s = None
    if plans:
        model_kind_name = "compiled"
        if precisions != ["fp32"] or calib or pin_fp32:
            raise KilnError(
                "a compiled module is already built: precisions, --calib and --pin-fp32 are "
                "build options"
            )
    else:
        model_kind_name = kind
        missing = [n for n in names if n not in specs and not (n in dtypes and dtypes[n][1])]
        if missing:
            raise KilnError(
                f"{path} is an ordinary {kind.replace('_', ' ')} file: give the shapes of its "
                "inputs "
                f"{missing} (--shapes NAME:DIMS or NAME:MIN:OPT:MAX) to compile it"
            )
        inputs = []
        for n in names:
            lo, opt, hi = specs.get(n) or (dtypes[n][1],) * 3
            inputs.append(
                kiln.Input(
                    min_shape=lo,
                    opt_shape=opt,
                    max_shape=hi,
                    dtype=getattr(torch, dtypes.get(n, ("float32",))[0]),
                )
            )
        enabled = [p for p in precisions if p != "int8"] + (
            ["int8"] if "int8" in precisions else []
        )
        calibrator = _calibrator(calib, names) if calib else None
        t1 = time.perf_counter()
        module = kiln.compile(
            module,
            inputs,
            enabled_precisions=enabled,
            device=device,
            timing_cache=timing_cache if timing_cache else True,
            calibrator=calibrator,
        )
        build_s = time.perf_counter() - t1
        plans = kiln.plans(module)
    inputs = []
    for n in names:
        if n in specs:
            inputs.append((n, dtypes.get(n, ("float32",))[0], specs[n]))
        elif n in dtypes and dtypes[n][1]:
            inputs.append((n, dtypes[n][0], (dtypes[n][1],) * 3))
        else:
            raise KilnError(f"give the shape of input {n!r} (--shapes {n}:DIMS)")
    target = torch.device("cuda" if device == "cuda" else "cpu")

    def call(feed):
        with torch.no_grad():
            out = module(*[feed[n].to(target) for n in names])
        leaves = torch.utils._pytree.tree_leaves(out)
        return {f"output{k}": t for k, t in enumerate(leaves) if isinstance(t, torch.Tensor)}

    m = Model(
        path=path,
        kind=model_kind_name,
        device=device,
        inputs=inputs,
        output_names=[],
        call=call,
        build_s=build_s,
        load_s=load_s,
        module=module,
        plans=plans,
    )
    if save_plan:
        if len(plans) != 1:
            raise KilnError(f"--save-plan: the module has {len(plans)} engines, not one")
        plans[0].save(save_plan)
    return m


def _has_engines_archive(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("kiln" in name.lower() for name in archive.namelist())


def _torch_input_names(module) -> tuple[list[str], dict[str, tuple[str, tuple[int, ...] | None]]]:
    """Positional input names of a torch module (TorchScript schema, or the ExportedProgram's user
    inputs with their example shapes)."""
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        names = list(module.graph_signature.user_inputs)
        metas = {n.name: n.meta.get("val") for n in module.graph.nodes if n.op == "placeholder"}
        dtypes = {}
        for n in names:
            v = metas.get(n)
            if isinstance(v, torch.Tensor) and all(isinstance(d, int) for d in v.shape):
                dtypes[n] = (str(v.dtype).removeprefix("torch."), tuple(v.shape))
        return names, dtypes
    if isinstance(module, torch.jit.ScriptModule):
        args = module.forward.schema.arguments[1:]
        return [a.name for a in args], {}
    import inspect

    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return [p.name for p in params], {}


def _calibrator(calib: str, names: Sequence[str]):
    """A kiln.Calibrator over .npz batches: one file, or every .npz in a folder (sorted)."""
    from kiln.calibration import Calibrator

    files = (
        sorted(os.path.join(calib, f) for f in os.listdir(calib) if f.endswith(".npz"))
        if os.path.isdir(calib)
        else [calib]
    )
    if not files:
        raise KilnError(f"--calib {calib}: no .npz batches found")
    batches = []
    for f in files:
        arrays = load_inputs(f)
        batches.append({n: arrays.get(n, arrays.get(f"arr_{k}")) for k, n in enumerate(names)})
    return Calibrator(batches)


def _load_onnx(
    path, specs, batch, precisions, device, calib, timing_cache, save_plan, pin_fp32, mark_all
) -> Model:
    import kiln
    import kiln.onnx

    net = kiln.onnx.parse(path)
    marked = mark_values(net) if mark_all else []
    ranges = {t.name: _fill_dims(t.name, list(t.shape), specs, batch) for t in net.inputs}
    config = kiln.BuilderConfig(device=device, timing_cache=timing_cache)
    config.precisions = precisions
    if any(
        tuple(t.shape) != ranges[t.name][0] or ranges[t.name][0] != ranges[t.name][2]
        for t in net.inputs
    ) or any(-1 in t.shape for t in net.inputs):
        config.add_optimization_profile(ranges)
    for name in pin_fp32:
        config.set_layer_precision(name, "float32")
    if calib:
        config.calibrator = _calibrator(calib, [t.name for t in net.inputs])
    t0 = time.perf_counter()
    plan = kiln.Builder().build(net, config)
    build_s = time.perf_counter() - t0
    if save_plan:
        plan.save(save_plan)
    engine = kiln.Engine(plan, device=device)
    model = _engine_model(
        path,
        "onnx",
        engine,
        plan,
        device,
        build_s,
        None,
        {t.name: ranges[t.name] for t in net.inputs},
        batch,
        network=net,
    )
    model.marked = marked
    return model


def mark_values(net) -> list[str]:
    """Marks every ONNX node output of a parsed network as a network output named after its ONNX
    value (float8 tensors aside: no binding holds them), so that a build keeps each one; returns
    the names marked, in node order."""
    from kiln.network import Tensor

    taken = {t.name for t in net.outputs}
    used = {t.id for t in net.outputs}
    marked = []
    for name, tid in net.onnx_info["values"]:
        t = Tensor(net, tid)
        if name in taken or t.dtype.startswith("float8"):
            continue
        if t.kind != "activation" or tid in used:
            t = net.add_identity(t, name=f"per_layer/{name}").output
        net.mark_output(t, name)
        used.add(t.id)
        taken.add(name)
        marked.append(name)
    return marked


# ---- timing ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    model: str
    kind: str
    device: str
    precisions: list[str]
    input_shapes: dict[str, list[int]]
    build_s: float | None
    load_s: float | None
    latencies_ms: list[float]
    host_ms: float  # mean host time of one call (launch only, on CUDA)
    streams: int = 1
    throughput: float = 0.0  # inferences (calls) per second, all streams together
    batch: int | None = None
    memory: dict[str, int] = field(default_factory=dict)
    cuda_graphs: bool | None = None
    profile: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        xs = sorted(self.latencies_ms)

        def pct(p):
            return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

        return {
            "min": xs[0],
            "mean": statistics.fmean(xs),
            "median": statistics.median(xs),
            "p90": pct(90),
            "p99": pct(99),
            "max": xs[-1],
        }

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        d["latency_ms"] = self.stats()
        d["iterations"] = len(self.latencies_ms)
        return d

    def text(self) -> str:
        s = self.stats()
        shapes = ", ".join(f"{n} {'x'.join(map(str, d))}" for n, d in self.input_shapes.items())
        lines = [
            f"kiln run {self.model} ({self.kind}) on {self.device}, {'/'.join(self.precisions)}"
        ]
        if self.device == "cpu":
            lines.append(
                "  (the CPU reference backend: correctness, not speed; a GPU times engines)"
            )
        lines.append(f"  inputs: {shapes}")
        if self.build_s is not None:
            lines.append(f"  build: {self.build_s:.2f} s")
        if self.load_s is not None:
            lines.append(f"  load: {self.load_s * 1e3:.1f} ms")
        lines.append(
            f"  latency ms over {len(self.latencies_ms)} runs: min {s['min']:.4f}, "
            f"mean {s['mean']:.4f}, median {s['median']:.4f}, p90 {s['p90']:.4f}, "
            f"p99 {s['p99']:.4f}, max {s['max']:.4f}"
        )
        per = (
            f" ({self.throughput * self.batch:.1f} samples/s at batch {self.batch})"
            if self.batch
            else ""
        )
        streams = f" over {self.streams} streams" if self.streams > 1 else ""
        lines.append(f"  throughput: {self.throughput:.1f} inferences/s{per}{streams}")
        lines.append(f"  host time per call: {self.host_ms:.4f} ms")
        if self.cuda_graphs is not None:
            lines.append(f"  CUDA graphs: {'on' if self.cuda_graphs else 'off'}")
        if self.memory:
            lines.append("  memory: " + ", ".join(f"{k} {_mib(v)}" for k, v in self.memory.items()))
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.profile:
            lines.append("  slowest layers (ms):")
            for p in self.profile[:15]:
                lines.append(
                    f"    {p['ms']:9.4f}  {p['name'][:48]:48s} {p['op']:16s} {p['kernel']}"
                )
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def benchmark(
    model: Model,
    feed: Mapping[str, np.ndarray] | None = None,
    *,
    warmup: int = 10,
    iterations: int = 100,
    duration: float | None = None,
    cuda_graphs: bool = True,
    streams: int = 1,
    profile: bool = False,
    precisions: Sequence[str] = ("fp32",),
    batch: int | None = None,
) -> tuple[RunResult, dict]:
    """Times `model` on `feed` (numpy arrays; default: model.feed()): `warmup` calls, then
    `iterations` timed calls (or as many as fit in `duration` seconds). On CUDA each call is timed
    with CUDA events on the current stream, and the host time of a call is its launch alone.
    streams > 1 (engines on CUDA): one execution context per stream, run together; the
    throughput counts every stream. Returns the result and the outputs of the first call (numpy)."""
    import torch

    feed = model.feed() if feed is None else dict(feed)
    dtypes = {n: dt for n, dt, _ in model.inputs}
    cuda = model.device == "cuda"
    tfeed = _torch_feed(feed, dtypes, "cuda" if cuda else "cpu")
    notes = list(model.notes)
    if model.engine is not None:
        for ctx in model.contexts:
            ctx.cuda_graphs = cuda_graphs and cuda
    elif not cuda_graphs:
        notes.append(
            "--no-cuda-graphs applies to plans and ONNX models; a module keeps its setting"
        )
    first = {k: _to_numpy(v) for k, v in model.call(tfeed).items()}
    if not model.output_names:
        model.output_names = list(first)
    for _ in range(max(0, warmup)):
        model.call(tfeed)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    latencies, host = time_calls(lambda: model.call(tfeed), iterations, duration, cuda)
    throughput = 1e3 / statistics.fmean(latencies) if latencies else 0.0
    if streams > 1:
        throughput = _throughput_on_streams(model, tfeed, streams, len(latencies))
    memory = {}
    if model.engine is not None and cuda:
        memory["weights"] = model.engine.device_bytes
        memory["context (arena, workspace)"] = sum(c.device_bytes for c in model.contexts)
    elif model.engine is not None:
        memory["arena (host)"] = sum(c.arena_bytes for c in model.contexts)
    if cuda:
        memory["torch peak (inputs, outputs, modules)"] = torch.cuda.max_memory_allocated()
    layers = _profile(model, feed) if profile else []
    result = RunResult(
        model=model.path,
        kind=model.kind,
        device=model.device,
        precisions=list(precisions),
        input_shapes={n: list(a.shape) for n, a in feed.items()},
        build_s=model.build_s,
        load_s=model.load_s,
        latencies_ms=latencies,
        host_ms=host,
        streams=streams,
        throughput=throughput,
        batch=batch,
        memory=memory,
        cuda_graphs=(cuda_graphs and cuda) if model.engine is not None else None,
        profile=layers,
        notes=notes,
    )
    return result, first


def time_calls(
    fn, iterations: int, duration: float | None = None, cuda: bool = True
) -> tuple[list[float], float]:
    """Milliseconds of each of `iterations` calls of `fn` (or as many as fit in `duration`
    seconds; at least one), each call timed alone: on CUDA, events around it on the current
    stream, waited for before the next call, so a call's time is its whole latency (launches
    included), as bench/run.py times its rows; else the host clock. Also the mean host time of a
    call (on CUDA, its launch alone)."""
    import torch

    latencies, host = [], []
    deadline = time.perf_counter() + duration if duration else None
    n = 0
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while (n < iterations) if deadline is None else (time.perf_counter() < deadline or n == 0):
        if cuda:
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            latencies.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
            latencies.append(ms)
            host.append(ms)
        n += 1
    return latencies, statistics.fmean(host)


GPU_LOCK_ENV = "KILN_GPU_LOCK"
SOURCE_ENV = "KILN_SOURCE_COMMIT"


def hardware_name(device) -> str:
    """The GPU's model name for a torch CUDA device ("NVIDIA H100 80GB HBM3"), else "cpu": what
    the zoo check and the benchmark record beside the source they measured."""
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def source_commit() -> str:
    """The Kiln source a measurement ran (the zoo check and the benchmark stamp their rows with
    it): $KILN_SOURCE_COMMIT where set (a copy of the tree without .git, as a GPU machine gets),
    else git's HEAD of this checkout, with "+changes" when tracked files differ from it; "" for
    an installed package."""
    import subprocess
    from pathlib import Path

    if os.environ.get(SOURCE_ENV):
        return os.environ[SOURCE_ENV]
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short=10", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if changed else "")


@contextlib.contextmanager
def gpu_turn():
    """The GPU to this process alone while inside, when the environment names a lock file
    (KILN_GPU_LOCK, set for their worker processes by the zoo check's and the benchmark's `--jobs
    N`): an exclusive flock on it, which every other worker takes for its own turns. Work started
    inside ends inside (synchronized before the lock is let go). A no-op without the variable."""
    path = os.environ.get(GPU_LOCK_ENV)
    if not path:
        yield
        return
    import fcntl

    import torch

    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_gpu_env(jobs: int, prefix: str = "kiln_gpu_"):
    """The environment for `jobs` worker processes that share this machine's one GPU in turns
    (`gpu_turn`), while inside: KILN_GPU_LOCK names the lock file of the turns (the one this
    process's environment already names, so that several runs started with one lock share turns,
    else a temporary file of this run's) and each worker gets cpus/jobs CPU threads
    (OMP_NUM_THREADS, TORCHINDUCTOR_COMPILE_THREADS), unless the environment sets them."""
    import tempfile

    share = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    with tempfile.NamedTemporaryFile(prefix=prefix, suffix=".lock") as lock:
        env = dict(os.environ)
        env.setdefault(GPU_LOCK_ENV, lock.name)
        env.setdefault("OMP_NUM_THREADS", share)
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", share)
        yield env


def median_latency_ms(fn, runs: int = 30, warmup: int = 5) -> float:
    """The median milliseconds of `runs` calls of `fn` on CUDA, each timed alone (CUDA events
    around it, waited for before the next): the latency the demo and the zoo check compare."""
    return median_latencies_ms([fn], runs, warmup)[0]


def median_latencies_ms(fns, runs: int = 30, warmup: int = 5) -> list[float]:
    """median_latency_ms of each of `fns`, their calls interleaved (run i of every fn, then run
    i + 1 of every fn), so that whatever else loads the machine meanwhile weighs on all of them
    alike: the fair way to compare two systems in one run."""
    import torch

    with torch.no_grad():
        for fn in fns:
            for _ in range(warmup):
                fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(runs):
            for fn, mine in zip(fns, times, strict=True):
                start.record()
                fn()
                end.record()
                end.synchronize()
                mine.append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


def _throughput_on_streams(model: Model, tfeed: dict, streams: int, iterations: int) -> float:
    import torch

    if model.engine is None or model.device != "cuda":
        raise KilnError("--streams N is for plans and ONNX models on CUDA")
    while len(model.contexts) < streams:
        ctx = model.engine.create_execution_context()
        ctx.cuda_graphs = model.contexts[0].cuda_graphs
        model.contexts.append(ctx)
    cuda_streams = [torch.cuda.Stream() for _ in range(streams)]
    for ctx, s in zip(model.contexts, cuda_streams, strict=False):  # warm each context
        with torch.cuda.stream(s):
            ctx.execute(tfeed)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        for ctx, s in zip(model.contexts, cuda_streams, strict=False):
            with torch.cuda.stream(s):
                ctx.execute(tfeed)
    torch.cuda.synchronize()
    return streams * iterations / (time.perf_counter() - t0)


def _profile(model: Model, feed: Mapping[str, np.ndarray]) -> list[dict]:
    import kiln

    rows = []
    for k, plan in enumerate(model.plans):
        shapes = {n: tuple(a.shape) for n, a in feed.items()} if model.engine is not None else None
        info = kiln.inspect(plan).profile(shapes, runs=10, device=model.device)
        for la in info.layers:
            rows.append(
                {
                    "engine": k,
                    "name": la.name,
                    "op": la.op,
                    "kernel": la.kernel,
                    "ms": la.time_ms or 0.0,
                }
            )
    return sorted(rows, key=lambda r: -r["ms"])


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        import torch

        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def save_json(result: RunResult, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result.to_dict(), f, indent=2)


def save_outputs(outputs: Mapping[str, np.ndarray], path: str) -> None:
    np.savez(path, **outputs)


def model_options(args) -> dict:
    """The options `kiln run` and `kiln compare` share: shapes, batch, device, pinned layers."""
    return {
        "shapes": parse_shape_specs(args.shapes),
        "batch": args.batch,
        "device": args.device,
        "pin_fp32": [n for item in args.pin_fp32 for n in item.split(",") if n],
    }


def main_run(args) -> int:
    """`kiln run` (kiln/cli.py parses the arguments)."""
    precisions = ["fp32"] + [p for p in ("tf32", "fp16", "bf16", "int8", "fp8") if getattr(args, p)]
    if (args.int8 or args.fp8) and not args.calib:
        print(
            "kiln run: note: --int8/--fp8 without --calib need a model with its own Q/DQ ops",
            file=sys.stderr,
        )
    model = load_model(
        args.model,
        precisions=precisions,
        calib=args.calib,
        timing_cache=args.timing_cache,
        save_plan=args.save_plan,
        **model_options(args),
    )
    feed = model.feed(load_inputs(args.inputs) if args.inputs else None)
    result, outputs = benchmark(
        model,
        feed,
        warmup=args.warmup,
        iterations=args.iterations,
        duration=args.duration,
        cuda_graphs=args.cuda_graphs,
        streams=args.streams,
        profile=args.profile,
        precisions=precisions,
        batch=args.batch,
    )
    print(result.text())
    if args.outputs:
        save_outputs(outputs, args.outputs)
        print(f"  outputs -> {args.outputs}")
    if args.save_plan:
        print(f"  plan -> {args.save_plan}")
    if args.json:
        save_json(result, args.json)
        print(f"  json -> {args.json}")
    return 0
