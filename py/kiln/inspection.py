"""kiln.inspect: what a built plan holds, layer by layer, and where its time goes.

    info = kiln.inspect("model.plan")          # a plan file, kiln.Plan, plan bytes or kiln.Engine
    print(info)                                # the text rendering (also `kiln inspect PLAN`)
    info.profile({"x": (1, 3, 224, 224)})      # per-layer times (`kiln inspect PLAN --profile`)
    info.to_dict()                             # the same as plain data (JSON)

Per layer: name, op, chosen kernel and its "tactic" attribute, dtypes in -> out, output shapes
(-1 for dynamic dims), what was fused into it (the "fused" attribute: the original layer names),
and after profile() its time with its cost model (FLOPs and bytes moved, kiln.roofline) and the
achieved TFLOP/s and GB/s; text(peaks=kiln.roofline.measure_peaks()) adds the layers that lose
most time against their roofline. Plan-wide: header (versions, GPU architecture), bindings,
optimization profiles and the memory plan (activation arena, workspace, constants, and the offset
and size of every activation in the arena).

profile() runs the plan in the engine's profiling mode (ExecutionContext.set_profiling): each
layer's launch is timed with CUDA events on device "cuda" or a host clock on device "cpu" (the
CPU reference backend), several runs, median per layer. On CUDA a delay kernel holds the stream
while the host enqueues every layer (ExecutionContext's profiling mode), so the events measure
GPU time only, not the host's launch gaps; a layer whose host call takes longer than the delay
covers (about 40 us per layer + 2 ms) would show part of that gap again. The events themselves
cost a little GPU time, so the profile's total slightly exceeds the engine's CUDA-graph latency.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from kiln import _C
from kiln.dtypes import backend_name, deprecated, device_of_backend, renamed


@dataclass
class LayerInfo:
    index: int
    name: str
    op: str
    kernel: str
    tactic: int | str | None
    input_dtypes: list[str]
    outputs: list[tuple[str, str, list[int]]]  # (name, dtype, dims)
    fused: list[str]
    attrs: dict
    time_ms: float | None = None
    constants: dict = field(default_factory=dict)  # small constant inputs by value
    input_names: list[str] = field(default_factory=list)
    flops: float | None = None  # the cost model at the profiled (or costs()) shapes
    bytes: float | None = None

    @property
    def dtypes(self) -> str:
        ins = ",".join(dict.fromkeys(self.input_dtypes)) or "-"
        outs = ",".join(dict.fromkeys(d for _, d, _ in self.outputs)) or "-"
        return f"{ins}->{outs}"


@dataclass
class MemoryInfo:
    arena_bytes: int
    workspace_bytes: int
    constant_bytes: int
    tensors: list[tuple[str, int, int]]  # (name, offset, bytes) of each activation in the arena


@dataclass
class Inspection:
    header: dict
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]
    profiles: list[dict]
    layers: list[LayerInfo]
    memory: MemoryInfo
    profile_device: str | None = None  # "cuda" or "cpu", once profiled
    profile_shapes: dict = field(default_factory=dict)
    profile_runs: int = 0
    _plan: object = field(default=None, repr=False, compare=False)

    # ---- profiling ------------------------------------------------------------------------

    def profile(
        self,
        shapes: dict | None = None,
        runs: int = 10,
        warmup: int = 2,
        device: str | None = None,
        *,
        backend: str | None = None,
    ) -> Inspection:
        """Times every layer: the median over `runs` profiled runs (after `warmup`), on random
        inputs of `shapes` (input name -> dims; by default static dims, and the first
        profile's opt shape for dynamic inputs). device: "cuda" (default when the plan was
        built for a GPU and one is visible) or "cpu" (``backend=`` is its deprecated name).
        Returns self."""
        from kiln.engine import Engine

        if backend is not None:
            backend = device_of_backend(backend)
        device = renamed("Inspection.profile", "backend", "device", backend, device)
        engine = Engine(self._plan, device)
        ctx = engine.create_execution_context()
        feed = {}
        for name, dtype, dims in self.inputs:
            shape = tuple(_input_shape(name, dims, shapes or {}, self.profiles))
            ctx.set_input_shape(name, shape)
            feed[name] = _random(dtype, shape, seed=len(feed))
        for layer, (flops, nbytes) in zip(self.layers, ctx.layer_costs(), strict=True):
            layer.flops, layer.bytes = flops, nbytes
        ctx.set_profiling(True)
        samples: list[list[float]] = []
        for i in range(warmup + runs):
            ctx.execute(feed)
            if i >= warmup:
                samples.append(ctx.layer_times())
        for k, layer in enumerate(self.layers):
            layer.time_ms = statistics.median(s[k] for s in samples) if samples else None
        self.profile_device = engine.device_type()
        self.profile_shapes = {n: list(ctx.tensor_shape(n)) for n, _, _ in self.inputs}
        self.profile_runs = runs
        return self

    def costs(self, shapes: dict | None = None) -> Inspection:
        """Every layer's cost model (kiln.roofline: FLOPs and bytes moved) at `shapes` (as for
        profile()), without running anything. Returns self."""
        ctx = _C.Engine(self._plan, backend_name("cpu")).create_execution_context()
        for name, _, dims in self.inputs:
            ctx.set_input_shape(name, tuple(_input_shape(name, dims, shapes or {}, self.profiles)))
        for layer, (flops, nbytes) in zip(self.layers, ctx.layer_costs(), strict=True):
            layer.flops, layer.bytes = flops, nbytes
        return self

    @property
    def total_flops(self) -> float | None:
        """The cost model's FLOPs summed over layers, once profile() or costs() ran."""
        costed = [la.flops for la in self.layers if la.flops is not None]
        return sum(costed) if costed else None

    @property
    def total_bytes(self) -> float | None:
        costed = [la.bytes for la in self.layers if la.bytes is not None]
        return sum(costed) if costed else None

    def roofline(self, peaks) -> list[dict]:
        """The timed layers against `peaks` (kiln.roofline.Peaks), the most time lost first: per
        layer its time, achieved TFLOP/s and GB/s, roofline time and time lost (ms)."""
        from kiln.roofline import attainable_ms, rates

        rows = []
        for la in self.layers:
            if la.time_ms is None or la.flops is None:
                continue
            roof = attainable_ms(la.flops, la.bytes, la.input_dtypes, peaks)
            tflops, gbps = rates(la.flops, la.bytes, la.time_ms)
            rows.append(
                {
                    "layer": la.name,
                    "op": la.op,
                    "kernel": la.kernel,
                    "time_ms": la.time_ms,
                    "tflops": tflops,
                    "gbps": gbps,
                    "roofline_ms": roof,
                    "lost_ms": la.time_ms - roof,
                }
            )
        return sorted(rows, key=lambda r: -r["lost_ms"])

    @property
    def profile_backend(self) -> str | None:
        """Deprecated: profile_device in the old words ("cuda", "reference")."""
        deprecated("Inspection.profile_backend", "Inspection.profile_device")
        return None if self.profile_device is None else backend_name(self.profile_device)

    @property
    def total_ms(self) -> float | None:
        times = [la.time_ms for la in self.layers if la.time_ms is not None]
        return sum(times) if times else None

    # ---- output ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(replace(self, _plan=None))  # the plan object itself is not plain data
        d.pop("_plan")
        d["total_ms"] = self.total_ms
        d["total_flops"] = self.total_flops
        d["total_bytes"] = self.total_bytes
        # Deprecated key, kept one release for readers of `kiln inspect --json`.
        d["profile_backend"] = d["profile_device"] and backend_name(d["profile_device"])
        return d

    def text(self, arena: bool = True, peaks=None) -> str:
        """The plan as text; after profile(), with each layer's time, achieved TFLOP/s and GB/s,
        and given `peaks` (kiln.roofline.measure_peaks) the layers that lose most time against
        their roofline."""
        h = self.header
        v = h.get("kiln_version", 0)
        arch = f"sm_{h['sm_arch']}" if h.get("sm_arch") else "reference only"
        lines = [
            f"Kiln plan: format {h.get('format_version')}, built by kiln "
            f"{_version3(v)} for {arch} "
            f"(CUDA {_version(h.get('cuda_version', 0), 1000, 10)}, "
            f"cuDNN {_version3(h.get('cudnn_version', 0))}, "
            f"cuBLASLt {_version3(h.get('cublaslt_version', 0))})",
            f"inputs:  {_bindings(self.inputs)}",
            f"outputs: {_bindings(self.outputs)}",
        ]
        for k, p in enumerate(self.profiles):
            ranges = ", ".join(
                f"{n} min {_dims(a)} opt {_dims(b)} max {_dims(c)}" for n, (a, b, c) in p.items()
            )
            lines.append(f"profile {k}: {ranges}")
        m = self.memory
        lines.append(
            f"memory: activation arena {_bytes(m.arena_bytes)} ({len(m.tensors)} tensors), "
            f"workspace {_bytes(m.workspace_bytes)}, constants {_bytes(m.constant_bytes)}"
        )
        lines.append("")
        timed = self.total_ms is not None
        head = ["#", "layer", "op", "kernel", "tactic", "dtypes", "output shapes", "fused"]
        costed = self.total_flops is not None
        if timed:
            head += ["time ms", "%"]
            if costed:
                head += ["TFLOP/s", "GB/s"]
        rows = []
        for la in self.layers:
            row = [
                str(la.index),
                la.name,
                la.op,
                la.kernel,
                "-" if la.tactic is None else str(la.tactic),
                la.dtypes,
                " ".join(_dims(d) for _, _, d in la.outputs),
                ",".join(la.fused) if la.fused else "-",
            ]
            if timed:
                t = la.time_ms or 0.0
                row += [f"{t:.4f}", f"{100 * t / self.total_ms:.1f}" if self.total_ms else "-"]
                if costed:
                    tflops, gbps = (la.flops / (t * 1e9), la.bytes / (t * 1e6)) if t > 0 else (0, 0)
                    row += [f"{tflops:.2f}", f"{gbps:.1f}"]
            rows.append(row)
        lines += _table(head, rows)
        quant = [la for la in self.layers if la.op in _QUANTIZATION_OPS]
        if quant:
            lines.append("")
            lines.append("quantization (scale, zero point; int8 range quant_min..quant_max):")
            lines += [f"  {la.name} ({la.op}): {_quant_params(la)}" for la in quant]
        fp8 = [
            la
            for la in self.layers
            if la.op == "fully_connected"
            and "out_dtype" in la.attrs
            and not la.attrs.get("quantized")
        ]
        if fp8:
            lines.append("")
            lines.append("FP8 GEMMs (float8 e4m3 operands, per-tensor scales):")
            lines += [
                f"  {la.name}: input scale {la.attrs['input_scale']:.6g}, weight scale "
                f"{la.attrs['weight_scale']:.6g} -> {_fp8_out(la)}"
                for la in fp8
            ]
        fp8_attention = [
            la for la in self.layers if "attention" in la.op and "output_inv_scale" in la.attrs
        ]
        if fp8_attention:
            lines.append("")
            lines.append("attention writing float8 (the next FP8 GEMM's input):")
            lines += [f"  {la.name}: -> {_fp8_out(la)}" for la in fp8_attention]
        for op, what in (("convolution", "convolutions"), ("fully_connected", "linear layers")):
            int8 = [la for la in self.layers if la.op == op and la.attrs.get("quantized")]
            if int8:
                lines.append("")
                lines.append(
                    f"INT8 {what} (int8 input and weight, per-channel weight scales, int32 sums):"
                )
                lines += [
                    f"  {la.name}: input scale {la.attrs['input_scale']:.6g} -> {_int8_out(la)}"
                    for la in int8
                ]
        if timed:
            shapes = ", ".join(f"{n} {_dims(d)}" for n, d in self.profile_shapes.items())
            lines.append("")
            lines.append(
                f"profile: {self.total_ms:.4f} ms summed over {len(self.layers)} layers "
                f"(median of {self.profile_runs} runs per layer, device {self.profile_device}, "
                f"{shapes}; "
                + (
                    "CUDA events around each launch)"
                    if self.profile_device == "cuda"
                    else "host clock)"
                )
            )
            slowest = sorted(self.layers, key=lambda la: -(la.time_ms or 0))[:5]
            lines.append(
                "slowest: " + ", ".join(f"{la.name} {la.time_ms:.4f} ms" for la in slowest)
            )
            if costed and self.total_ms:
                flops, nbytes, ms = self.total_flops, self.total_bytes, self.total_ms
                lines.append(
                    f"cost model: {flops / 1e9:.3f} GFLOP, {nbytes / 1e6:.2f} MB moved; achieved "
                    f"{flops / (ms * 1e9):.2f} TFLOP/s, {nbytes / (ms * 1e6):.1f} GB/s over the "
                    "summed layer times"
                )
            if costed and peaks is not None:
                lost = self.roofline(peaks)
                lines.append(
                    f"roofline ({peaks}): layers at their roofline would take "
                    f"{sum(r['roofline_ms'] for r in lost):.4f} ms; most time lost against it:"
                )
                lines += _table(
                    [
                        "layer",
                        "op",
                        "kernel",
                        "time ms",
                        "TFLOP/s",
                        "GB/s",
                        "roofline ms",
                        "lost ms",
                    ],
                    [
                        [
                            r["layer"],
                            r["op"],
                            r["kernel"],
                            f"{r['time_ms']:.4f}",
                            f"{r['tflops']:.2f}",
                            f"{r['gbps']:.1f}",
                            f"{r['roofline_ms']:.4f}",
                            f"{r['lost_ms']:.4f}",
                        ]
                        for r in lost[:10]
                    ],
                )
        if arena and m.tensors:
            lines.append("")
            lines.append("activation arena (offset, bytes):")
            lines += _table(
                ["tensor", "offset", "bytes"],
                [[n, str(o), str(b)] for n, o, b in sorted(m.tensors, key=lambda t: t[1])],
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


_QUANTIZATION_OPS = ("quantize", "dequantize", "fake_quantize")


def _int8_out(la) -> str:
    """What an INT8 layer writes: its float dtype, or int8 and its requantization scale, or both
    (an INT8 convolution's int8 copy)."""
    inv = la.attrs.get("output_inv_scale")
    if inv is None:
        return la.attrs["out_dtype"]
    lo, hi = la.attrs.get("output_quant_min", -128), la.attrs.get("output_quant_max", 127)
    int8 = f"int8 (scale {1 / inv:.6g}, range {lo}..{hi})"
    return f"{la.attrs['out_dtype']} and {int8}" if la.attrs.get("int8_copy") else int8


def _fp8_out(la) -> str:
    """What an FP8 GEMM (or attention) writes: its float dtype, or float8 e4m3 and its scale (a
    quantize folded in)."""
    inv = la.attrs.get("output_inv_scale")
    if inv is None:
        return la.attrs.get("out_dtype", "")
    return f"float8 e4m3 (scale {1 / inv:.6g})"


def _quant_params(la: LayerInfo) -> str:
    """A quantization layer's scale(s) and zero point(s), from its constant inputs."""
    given = [la.constants.get(n) for n in la.input_names[1:3]]
    scale = given[0] if given else None
    zero = given[1] if len(given) > 1 and given[1] is not None else [0]
    lo, hi = la.attrs.get("quant_min", -128), la.attrs.get("quant_max", 127)
    if la.attrs.get("format") == "e4m3":
        shown = "computed at run time" if scale is None else f"{scale[0]:.6g}"
        return f"scale {shown}; float8 e4m3 (-448..448)"
    if scale is None:
        return f"scale computed at run time; range {lo}..{hi}"
    if len(scale) == 1:
        return f"scale {scale[0]:.6g}, zero point {zero[0]}; range {lo}..{hi}"
    return (
        f"{len(scale)} per-channel scales along axis {la.attrs.get('axis', 0)}, "
        f"{min(scale):.6g}..{max(scale):.6g}, zero points {min(zero)}..{max(zero)}; "
        f"range {lo}..{hi}"
    )


def inspect(source) -> Inspection:
    """An Inspection of a plan: a kiln.Plan, plan bytes, a plan file's path, or a kiln.Engine."""
    plan = _plan_of(source)
    layers = []
    for k, d in enumerate(plan.layers()):
        attrs = dict(d["attrs"])
        fused = attrs.get("fused")
        layers.append(
            LayerInfo(
                index=k,
                name=d["name"],
                op=d["op"],
                kernel=d["kernel"],
                tactic=attrs.get("tactic"),
                input_dtypes=[t[1] for t in d["inputs"]],
                outputs=[(n, dt, list(dims)) for n, dt, dims in d["outputs"]],
                fused=[s.strip() for s in fused.split(",") if s.strip()]
                if isinstance(fused, str)
                else [],
                attrs=attrs,
                constants=dict(d.get("constants", {})),
                input_names=[t[0] for t in d["inputs"]],
            )
        )
    # Bindings only: the CPU reference backend runs any plan.
    engine = _C.Engine(plan, backend_name("cpu"))

    def binding(name):
        dtype, dims = engine.binding(name)
        return (name, dtype, list(dims))

    mem = plan.memory
    return Inspection(
        header=dict(plan.header),
        inputs=[binding(n) for n in engine.input_names],
        outputs=[binding(n) for n in engine.output_names],
        profiles=[{n: tuple(list(x) for x in r) for n, r in p.items()} for p in plan.profiles],
        layers=layers,
        memory=MemoryInfo(
            arena_bytes=mem["arena_bytes"],
            workspace_bytes=mem["workspace_bytes"],
            constant_bytes=mem["constant_bytes"],
            tensors=[(n, int(o), int(b)) for n, o, b in mem["tensors"]],
        ),
        _plan=plan,
    )


# ---- helpers --------------------------------------------------------------------------------


def _plan_of(source):
    from kiln.engine import Engine

    if isinstance(source, _C.Plan):
        return source
    if isinstance(source, Engine):
        return source.plan
    if isinstance(source, _C.Engine):
        return source.plan
    if isinstance(source, bytes | bytearray | memoryview):
        return _C.Plan.deserialize(bytes(source))
    if isinstance(source, str | os.PathLike):
        return _C.Plan.load(os.fspath(source))
    raise TypeError(
        f"kiln.inspect takes a kiln.Plan, plan bytes, a plan file or a kiln.Engine, "
        f"got {type(source).__name__}"
    )


def parse_shapes(items) -> dict[str, tuple[int, ...]]:
    """["x=1x3x224x224", ...] -> {"x": (1, 3, 224, 224)}."""
    shapes = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            raise ValueError(f"--shapes {item!r}: write NAME=DxDxD, e.g. x=1x3x224x224") from None
    return shapes


def _input_shape(name: str, dims: list[int], shapes: dict, profiles: list[dict]) -> list[int]:
    if name in shapes:
        return list(shapes[name])
    if all(d >= 0 for d in dims):
        return list(dims)
    if profiles and name in profiles[0]:
        return list(profiles[0][name][1])
    raise ValueError(f"input {name!r} has dynamic dims {dims} and no profile: give its shape")


def _random(dtype: str, shape: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in ("float32", "float16"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bfloat16":
        raise ValueError("profiling a plan with a bfloat16 input is not supported from Python")
    # Integer inputs (token ids, indices) and flags: zeros are valid for every op that reads them.
    return np.zeros(shape, dtype=np.bool_ if dtype == "bool" else dtype)


def _dims(d) -> str:
    return "[" + ",".join(str(x) for x in d) + "]"


def _bindings(items) -> str:
    return ", ".join(f"{n} {dt}{_dims(d)}" for n, dt, d in items) or "-"


def _bytes(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n} B"


def _version(v: int, major: int, minor: int) -> str:
    return f"{v // major}.{v % major // minor}" if v else "none"


def _version3(v: int) -> str:
    """major*10000 + minor*100 + patch (Kiln, cuDNN 9, cuBLAS) as text."""
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v else "none"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r).rstrip() for r in rows]
    return out
