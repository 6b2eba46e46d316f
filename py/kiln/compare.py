"""`kiln compare MODEL --against onnxruntime | torch | reference`: Kiln's outputs next to another
runtime's on the same inputs, per output (max absolute and relative error, cosine, pass / fail),
and with ``per_layer`` for every layer of an ONNX model: the first layer whose error exceeds the
tolerance, the error's growth along the path to it, and (in FP16) the layers whose reference
values overflow FP16's range, with the ``--pin-fp32`` list that keeps them in float32.

    from kiln.compare import compare
    result = compare("model.onnx", "onnxruntime", precisions=["fp16"], per_layer=True)
    print(result.text())

The references: ``onnxruntime`` (ONNX models; CPU, float32), ``torch`` (ordinary TorchScript or
ExportedProgram files: the eager model on the CPU in float32) and ``reference`` (Kiln's own CPU
reference backend in float32: any model Kiln can build).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kiln._C import KilnError
from kiln.log import log
from kiln.runner import Model, benchmark, load_inputs, load_model, model_options

FP16_MAX = 65504.0
# (rtol, atol) by the least precise precision a build may use.
TOLERANCES = {
    "fp32": (1e-4, 1e-5),
    "tf32": (5e-3, 5e-3),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
    "fp8": (1e-1, 1e-1),
    "int8": (1e-1, 1e-1),
}
AGAINST = ("onnxruntime", "torch", "reference")


def default_tolerances(precisions: Sequence[str]) -> tuple[float, float]:
    order = ["fp32", "tf32", "fp16", "bf16", "fp8", "int8"]
    worst = max((p for p in precisions if p in TOLERANCES), key=order.index, default="fp32")
    return TOLERANCES[worst]


@dataclass
class TensorDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    reference_absmax: float
    op: str = ""  # per layer: the ONNX node's op_type
    layer: str = ""  # per layer: the Kiln layer producing it

    def row(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.name[:40]:40s} {'x'.join(map(str, self.shape)) or 'scalar':>16s} "
            f"{self.max_abs:11.3e} {self.max_rel:11.3e} {self.cosine:10.6f}  {verdict}"
        )


def diff(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> TensorDiff:
    """got (Kiln) against want (the reference), in float64."""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return TensorDiff(
            name, tuple(g.shape), float("inf"), float("inf"), float("nan"), False, float("nan")
        )
    both_nan = np.isnan(g) & np.isnan(w)
    same_inf = np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))
    ok = both_nan | same_inf
    err = np.where(ok, 0.0, np.abs(g - w))
    err = np.where(np.isnan(err), np.inf, err)
    rel = err / np.maximum(np.abs(w), 1e-12)
    finite = np.isfinite(g) & np.isfinite(w)
    gf, wf = np.where(finite, g, 0.0).ravel(), np.where(finite, w, 0.0).ravel()
    norms = np.linalg.norm(gf) * np.linalg.norm(wf)
    cosine = float(gf @ wf / norms) if norms > 0 else (1.0 if np.array_equal(gf, wf) else 0.0)
    passed = bool(np.all(ok | (err <= atol + rtol * np.abs(w))))
    absmax = float(np.max(np.abs(np.where(np.isfinite(w), w, 0.0)))) if w.size else 0.0
    return TensorDiff(
        name,
        tuple(g.shape),
        float(err.max()) if err.size else 0.0,
        float(rel.max()) if rel.size else 0.0,
        cosine,
        passed,
        absmax,
    )


@dataclass
class CompareResult:
    model: str
    against: str
    device: str
    precisions: list[str]
    rtol: float
    atol: float
    outputs: list[TensorDiff]
    layers: list[TensorDiff] = field(default_factory=list)
    first_bad: TensorDiff | None = None
    path: list[TensorDiff] = field(default_factory=list)  # inputs side first, first_bad last
    overflow: list[TensorDiff] = field(default_factory=list)
    pin_fp32: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.outputs)

    def text(self) -> str:
        head = f"{'tensor':40s} {'shape':>16s} {'max abs':>11s} {'max rel':>11s} {'cosine':>10s}"
        lines = [
            f"kiln compare {self.model}: Kiln on {self.device} ({'/'.join(self.precisions)}) "
            f"against {self.against}, rtol {self.rtol:g}, atol {self.atol:g}",
            head,
        ]
        lines += [d.row() for d in self.outputs]
        lines.append("PASS" if self.passed else "FAIL")
        if self.layers:
            bad = sum(not d.passed for d in self.layers)
            lines.append(f"per layer: {len(self.layers)} tensors compared, {bad} beyond tolerance")
            if self.first_bad is None:
                lines.append("  every layer is within tolerance")
            else:
                d = self.first_bad
                lines.append(
                    f"  first layer beyond tolerance: {d.name} ({d.op}, Kiln layer {d.layer})"
                )
                lines.append("  the error along the path to it (inputs side first):")
                lines.append("    " + head)
                lines += ["    " + p.row() + f"  {p.op}" for p in self.path]
        if self.overflow:
            lines.append(
                f"  {len(self.overflow)} layers' reference values exceed FP16's range "
                "(|x| > 65504): "
                + ", ".join(f"{d.name} ({d.reference_absmax:.3g})" for d in self.overflow[:10])
            )
            lines.append(f"  keep them in float32: --pin-fp32 {','.join(self.pin_fp32)}")
        return "\n".join(lines)


def _reference_onnxruntime(path: str, feed: Mapping[str, np.ndarray], extra: Sequence[str]) -> dict:
    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError(
            "--against onnxruntime needs ONNX Runtime: pip install onnxruntime"
        ) from None
    model = onnx.load(path)
    if extra:
        inferred = onnx.shape_inference.infer_shapes(model)
        typed = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        have = {o.name for o in model.graph.output}
        for name in extra:
            if name in typed and name not in have:
                model.graph.output.append(typed[name])
    types = {
        i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        for i in model.graph.input
    }
    session = _ort_session(ort, model)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    ort_feed = {
        k: np.asarray(v).astype(types.get(k, v.dtype)) for k, v in feed.items() if k in inputs
    }
    return dict(zip(names, session.run(names, ort_feed), strict=True))


def _ort_session(ort, model):
    """An ONNX Runtime CPU session of `model`. An ONNX Runtime older than the onnx package that
    wrote the model refuses its IR version even when the model uses nothing newer: the reference
    then runs with the IR version lowered to the runtime's maximum, and says so."""
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 (onnxruntime raises its own Fail type)
        m = re.search(
            r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", str(error)
        )
        if not m:
            raise
        log(
            "warning",
            f"kiln compare: ONNX Runtime {ort.__version__} reads IR version <= {m.group(2)}; the "
            f"model has {m.group(1)}: running the reference with IR version {m.group(2)}",
        )
        model.ir_version = int(m.group(2))
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference_torch(model: Model, path: str, feed: Mapping[str, np.ndarray]) -> dict:
    import torch

    from kiln.runner import _torch_input_names, model_kind

    kind = model_kind(path)
    if kind == "onnx":
        raise KilnError(
            "--against torch is for TorchScript / ExportedProgram files; for ONNX use onnxruntime"
        )
    if model.kind == "compiled":
        raise KilnError(
            "--against torch needs the original model: this file already holds Kiln engines "
            "(compare the uncompiled file, or use --against reference)"
        )
    from kiln.log import torch_noise_filtered

    with torch_noise_filtered():
        loaded = (
            torch.jit.load(path, map_location="cpu")
            if kind == "torchscript"
            else torch.export.load(path)
        )
    names, _ = _torch_input_names(loaded)
    module = loaded if kind == "torchscript" else loaded.module()
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.asarray(feed[n])) for n in names])
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return {f"output{k}": t.float().numpy() for k, t in enumerate(leaves)}


def compare(
    path: str,
    against: str = "reference",
    *,
    shapes: Mapping | None = None,
    batch: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    device: str = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    per_layer: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    pin_fp32: Sequence[str] = (),
    seed: int = 0,
) -> CompareResult:
    """Runs Kiln (built for `device` with `precisions`) and `against` on the same inputs (given,
    else random) and compares every output; per_layer: every layer of an ONNX model (see the
    module docstring)."""
    if against not in AGAINST:
        raise ValueError(f"against must be one of {', '.join(AGAINST)}, got {against!r}")
    precisions = list(precisions)
    d_rtol, d_atol = default_tolerances(precisions)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    model = load_model(
        path,
        shapes=shapes,
        batch=batch,
        precisions=precisions,
        device=device,
        pin_fp32=pin_fp32,
        mark_all=per_layer,
    )
    feed = model.feed(inputs, seed=seed)
    _, got = benchmark(model, feed, warmup=0, iterations=1, precisions=precisions)
    marked = model.marked
    if against == "onnxruntime":
        if model.kind != "onnx":
            raise KilnError("--against onnxruntime is for ONNX models")
        want = _reference_onnxruntime(path, feed, marked)
    elif against == "torch":
        want = _reference_torch(model, path, feed)
    else:
        ref = load_model(
            path, shapes=shapes, batch=batch, precisions=["fp32"], device="cpu", mark_all=per_layer
        )
        _, want = benchmark(ref, feed, warmup=0, iterations=1)
    outputs_real = [n for n in got if n not in set(marked)]
    missing = [n for n in outputs_real if n not in want]
    if missing:
        raise KilnError(f"the reference gave no output named {missing}; it has {sorted(want)}")
    result = CompareResult(
        model=path,
        against=against,
        device=model.device,
        precisions=precisions,
        rtol=rtol,
        atol=atol,
        outputs=[diff(n, got[n], want[n], rtol, atol) for n in outputs_real],
    )
    if per_layer:
        _per_layer(result, model, got, want, marked, precisions)
    return result


def _per_layer(
    result: CompareResult,
    model: Model,
    got: dict,
    want: dict,
    marked: list[str],
    precisions: Sequence[str],
) -> None:
    """Every marked tensor compared; the first beyond tolerance in node order; the path to it."""
    import onnx

    graph = onnx.load(model.path, load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output if o}
    layer_of = {}
    for name, _op, _ins, outs, _attrs in model.network.layers:
        for o in outs:
            layer_of[o] = name
    tensor_of = dict(model.network.onnx_info["values"])
    order = [n for n, _ in model.network.onnx_info["values"]]
    diffs = {}
    for name in order:
        if name in got and name in want:
            d = diff(name, got[name], want[name], result.rtol, result.atol)
            node = producer.get(name)
            d.op = node.op_type if node is not None else ""
            d.layer = layer_of.get(tensor_of.get(name), "")
            diffs[name] = d
    result.layers = list(diffs.values())
    result.first_bad = next((d for d in result.layers if not d.passed), None)
    if result.first_bad is not None:  # walk back through the worst input at each node
        path, name = [], result.first_bad.name
        while name in diffs and len(path) < 64:
            path.append(diffs[name])
            node = producer.get(name)
            ins = [i for i in (node.input if node is not None else []) if i in diffs]
            if not ins:
                break
            name = max(ins, key=lambda i: diffs[i].max_abs)
        result.path = path[::-1]
    if "fp16" in precisions:
        # A value past FP16's range can be neither computed nor read in FP16: its producer and
        # every layer reading it stay in float32.
        result.overflow = [d for d in result.layers if d.reference_absmax > FP16_MAX]
        over = {d.name for d in result.overflow}
        pins = {d.layer for d in result.overflow if d.layer}
        for node in graph.node:
            if over & set(node.input) and node.output and node.output[0] in tensor_of:
                pins.add(layer_of.get(tensor_of[node.output[0]], ""))
        result.pin_fp32 = sorted(p for p in pins if p)


def main_compare(args) -> int:
    """`kiln compare` (kiln/cli.py parses the arguments)."""
    precisions = ["fp32"] + [p for p in ("tf32", "fp16", "bf16") if getattr(args, p)]
    result = compare(
        args.model,
        args.against,
        precisions=precisions,
        rtol=args.rtol,
        atol=args.atol,
        per_layer=args.per_layer,
        inputs=load_inputs(args.inputs) if args.inputs else None,
        **model_options(args),
    )
    print(result.text())
    sys.stdout.flush()
    return 0 if result.passed else 1
