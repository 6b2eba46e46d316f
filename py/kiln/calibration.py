"""Post-training INT8 and FP8 calibration for kiln.compile (docs/quantization.md).

``kiln.compile(model, inputs, enabled_precisions={torch.int8, ...}, calibrator=kiln.Calibrator(
batches, algorithm="entropy"))``: after torch.export, the exported program runs in PyTorch over the
calibration batches (the unquantized network, on the compile device) and records each quantized
activation's range:

- minmax: the largest magnitude seen;
- percentile: the magnitude below which ``percentile`` % of the values fall (a histogram of |x|);
- entropy: the clipping threshold whose 8-bit quantization of the |x| histogram loses the least
  information (the Kullback-Leibler divergence between the clipped distribution and its 128-level
  quantization, as TensorRT's entropy calibrator chooses it).

What is quantized: the data input of every convolution and matrix product whose other operand is
a weight (aten.convolution, aten.addmm, aten.mm), symmetric per tensor (scale = range / 127, zero
point 0, values in [-127, 127]); the second operand of a residual add whose sum is such an input,
when convolutions compute both operands (a ResNet block's downsample branch: residual_operands);
and those weights, symmetric per output channel (scale = the channel's largest magnitude / 127).
The activations get a ``kiln::fake_quantize_int8`` node in
the exported graph (kiln/quant_ops.py; its scale a constant), the weights are replaced by their
fake-quantized values; the builder turns the layers it has INT8 kernels for into INT8 layers
(quantize_int8_layers) and, the quantization being calibrated, may quantize a convolution's
residual too (docs/quantization.md).

FP8 (``enabled_precisions={torch.float8_e4m3fn, torch.float16}``): the same ranges, for the
data input of every matrix product with a weight (aten.addmm, aten.mm; convolutions stay as they
are), quantized per tensor to float8 e4m3 (scale = range / 448) by a ``kiln::fake_quantize_fp8``
node (kiln/quant_ops.py), and the weights per tensor to the e4m3 grid (scale = max |W| / 448).
On a GPU with FP8 tensor cores the builder turns each into an FP8 GEMM (quantize_fp8_gemms);
elsewhere the engine computes the same fake quantization in floating point.

The calibration cache (``cache_file``) is a small text file, one ``name range`` line per quantized
activation; when it exists the batches are not run. A cache made for another network (other
tensor names) is refused with the names that differ.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree

from kiln import _C
from kiln.fx_lowering import lifted_tensors
from kiln.log import log
from kiln.progress import iterate
from kiln.quant_ops import FP8_MAX, fake_quantize_fp8, float32_reciprocal

ALGORITHMS = ("entropy", "minmax", "percentile")
_CACHE_HEADER = "# kiln calibration cache v1"
_QMAX = 127  # symmetric int8: [-127, 127]

aten = torch.ops.aten


class Calibrator:
    """Calibration batches and how to turn what they show into INT8 ranges.

    batches: an iterable of input tuples (a list, a DataLoader; a single tensor counts as a
    one-input tuple), as the compiled module is called. algorithm: "entropy" (default),
    "minmax" or "percentile" (with ``percentile``, e.g. 99.99). cache_file: read the ranges from
    it when it exists, else write them there after calibrating. num_bins: the |x| histogram's
    resolution (entropy and percentile)."""

    def __init__(
        self,
        batches: Iterable,
        algorithm: str = "entropy",
        percentile: float = 99.99,
        cache_file: str | Path | None = None,
        num_bins: int = 2048,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown calibration algorithm {algorithm!r}; use one of {ALGORITHMS}"
            )
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if num_bins < 256:
            raise ValueError(f"num_bins must be at least 256, got {num_bins}")
        self.batches = batches
        self.algorithm = algorithm
        self.percentile = float(percentile)
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.num_bins = int(num_bins)

    # ---- ranges -------------------------------------------------------------------------------

    def ranges(self, program, names: list[str], device: torch.device, specs=()) -> dict[str, float]:
        """{activation name: range} for the named nodes of the exported program: from the cache,
        or by running the batches (whose shapes must lie in the kiln.Input ranges `specs`)."""
        if self.cache_file is not None and self.cache_file.exists():
            return self._read_cache(names)
        amax = self._calibrate(program, names, device, specs)
        if self.cache_file is not None:
            self._write_cache(amax)
        return amax

    def _calibrate(
        self, program, names: list[str], device: torch.device, specs
    ) -> dict[str, float]:
        gm = program.module()
        # The unlifted module renames some placeholders (an argument named `input` becomes
        # `input_1`): user inputs are matched by position, other nodes keep their names.
        user = set(program.graph_signature.user_inputs)
        ours = [n.name for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
        theirs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        renamed = dict(zip(theirs, ours, strict=False))
        wanted = set(names)
        batches = [b if isinstance(b, tuple | list) else (b,) for b in self.batches]
        if not batches:
            raise _C.KilnError("kiln.Calibrator: the calibration batches are empty")
        for k, batch in enumerate(batches):
            _check_batch(k, batch, specs)

        def run(observe) -> None:
            for k, batch in iterate(enumerate(batches), "calibrating", total=len(batches)):
                flat = pytree.tree_leaves((tuple(_to(x, device) for x in batch), {}))
                _Observer(gm, wanted, observe, renamed).run(*flat)
                log("info", f"kiln calibration ({self.algorithm}): batch {k + 1}/{len(batches)}")

        # Pass 1: the largest magnitude per tensor (all minmax needs).
        amax = dict.fromkeys(names, 0.0)
        seen: set[str] = set()

        def track_max(name, value):
            seen.add(name)
            if value.numel():
                top = float(value.detach().abs().max())
                if not math.isfinite(top):
                    raise _C.KilnError(
                        f"kiln.Calibrator: {name} holds inf or NaN on a calibration batch"
                    )
                amax[name] = max(amax[name], top)

        with torch.no_grad():
            run(track_max)
        missing = [n for n in names if n not in seen]
        if missing:
            raise _C.KilnError(f"kiln.Calibrator: tensors never computed: {missing[:5]}")
        if self.algorithm == "minmax":
            return amax
        # Pass 2: histograms of |x| over [0, amax].
        hists = {n: np.zeros(self.num_bins, dtype=np.float64) for n in names}

        def track_hist(name, value):
            top = amax[name]
            if top <= 0 or value.numel() == 0:
                return
            h = torch.histc(value.detach().abs().float(), bins=self.num_bins, min=0.0, max=top)
            hists[name] += h.cpu().double().numpy()

        with torch.no_grad():
            run(track_hist)
        out = {}
        for n in names:
            width = amax[n] / self.num_bins
            if amax[n] <= 0:
                out[n] = 0.0
            else:  # the builder's computation (core/calibration.cpp), shared with the native API
                out[n] = _C.calibrated_range(
                    hists[n].tolist(), width, self.algorithm, self.percentile
                )
        return out

    # ---- cache --------------------------------------------------------------------------------

    def _write_cache(self, amax: dict[str, float]) -> None:
        lines = [_CACHE_HEADER, f"algorithm {self.algorithm}"]
        lines += [f"{name} {float(v).hex()}" for name, v in sorted(amax.items())]
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_text("\n".join(lines) + "\n")

    def _read_cache(self, names: list[str]) -> dict[str, float]:
        path = self.cache_file
        lines = path.read_text().splitlines()
        if not lines or lines[0] != _CACHE_HEADER:
            raise _C.KilnError(
                f"kiln.Calibrator: {path} is not a Kiln calibration cache (its first line is not "
                f"{_CACHE_HEADER!r}); delete it to calibrate again"
            )
        cached: dict[str, float] = {}
        for k, line in enumerate(lines[1:], start=2):
            if line.startswith("algorithm "):
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                cached[parts[0]] = float.fromhex(parts[1])
            except ValueError:
                raise _C.KilnError(
                    f"kiln.Calibrator: {path} line {k} is not 'name range': {line[:80]!r}; "
                    "delete the cache to calibrate again"
                ) from None
            if not math.isfinite(cached[parts[0]]) or cached[parts[0]] < 0:
                raise _C.KilnError(f"kiln.Calibrator: {path} line {k}: the range must be >= 0")
        extra, lacking = sorted(set(cached) - set(names)), sorted(set(names) - set(cached))
        if extra or lacking:
            raise _C.KilnError(
                f"kiln.Calibrator: the calibration cache {path} was made for another network: it "
                f"has ranges for {len(extra)} tensors this network does not have "
                f"({', '.join(extra[:3]) or '-'}) and lacks {len(lacking)} it needs "
                f"({', '.join(lacking[:3]) or '-'}). Delete it or pass another cache_file."
            )
        return {n: cached[n] for n in names}


def _check_batch(k: int, batch, specs) -> None:
    """A calibration batch runs through the exported program, which holds for the compiled
    inputs' shapes only: each tensor must lie in its kiln.Input range."""
    if specs and len(batch) != len(specs):
        raise _C.KilnError(
            f"kiln.Calibrator: batch {k} has {len(batch)} inputs, the model is compiled for "
            f"{len(specs)}"
        )
    for i, (x, spec) in enumerate(zip(batch, specs, strict=False)):
        shape = tuple(getattr(x, "shape", ()))
        lo, hi = tuple(spec.min_shape), tuple(spec.max_shape)
        if len(shape) != len(lo) or any(
            not a <= n <= b for n, a, b in zip(shape, lo, hi, strict=True)
        ):
            raise _C.KilnError(
                f"kiln.Calibrator: batch {k} input {i} has shape {list(shape)}, outside the "
                f"compiled range {list(lo)}..{list(hi)}: give calibration batches of the compiled "
                "shapes, or make the batch dim dynamic with kiln.Input(min_shape=..., "
                "max_shape=...)"
            )


def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


class _Observer(torch.fx.Interpreter):
    """Runs the program's module, handing each wanted node's value to `observe`."""

    def __init__(self, gm, wanted: set[str], observe, renamed: dict[str, str]):
        super().__init__(gm)
        self.wanted = wanted
        self.observe = observe
        self.renamed = renamed  # module placeholder name -> the exported program's

    def run_node(self, n):
        result = super().run_node(n)
        name = self.renamed.get(n.name, n.name) if n.op == "placeholder" else n.name
        if name in self.wanted and isinstance(result, torch.Tensor):
            self.observe(name, result)
        return result


class NetworkCalibrator(_C.Int8Calibrator):
    """A kiln.Calibrator as the native builder's Int8Calibrator (core/calibration.h):
    ``kiln.BuilderConfig(precisions=["int8"], calibrator=kiln.Calibrator(batches))`` wraps it so.
    Each batch is a tuple of arrays or tensors in the network's input order, or a dict by input
    name; the cache file is the same text file kiln.compile's calibration writes."""

    def __init__(self, calibrator: Calibrator):
        super().__init__()
        self.calibrator = calibrator
        self._batches = None
        self._count = 0

    def get_batch(self, names):
        if self._batches is None:
            self._batches = iter(self.calibrator.batches)
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._count += 1
        if isinstance(batch, dict):
            missing = [n for n in names if n not in batch]
            if missing:
                raise _C.KilnError(
                    f"kiln.Calibrator: batch {self._count - 1} has no input {missing[0]!r} "
                    f"(the network's inputs: {names})"
                )
            batch = [batch[n] for n in names]
        elif not isinstance(batch, tuple | list):
            batch = (batch,)
        if len(batch) != len(names):
            raise _C.KilnError(
                f"kiln.Calibrator: batch {self._count - 1} has {len(batch)} inputs, the network "
                f"has {len(names)} ({names})"
            )
        return [_host_array(x) for x in batch]

    def read_cache(self) -> str:
        path = self.calibrator.cache_file
        return path.read_text() if path is not None and path.exists() else ""

    def write_cache(self, cache: str) -> None:
        path = self.calibrator.cache_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cache)

    def algorithm_name(self) -> str:
        return self.calibrator.algorithm

    def percentile(self) -> float:
        return self.calibrator.percentile

    def num_bins(self) -> int:
        return self.calibrator.num_bins


def _host_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.ascontiguousarray(x.detach().cpu().numpy())
    return np.ascontiguousarray(x)


# ---- inserting the quantization into the exported program ------------------------------------

_VIEWS = {aten.t.default, aten.permute.default, aten.transpose.int}


def _weight_of(node, lifted) -> str | None:
    """The parameter placeholder `node` reads (directly, or through a transpose: the weight of a
    Linear is t(W)); its dim 0 is the output channel either way. None when it reads none."""
    if node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    return node.name if node.op == "placeholder" and node.name in lifted else None


def quantizable(program, fmt: str = "int8") -> list[tuple[torch.fx.Node, int, str]]:
    """(consumer, activation argument index, weight placeholder) of each convolution (INT8 only)
    or matrix product with a weight operand."""
    lifted = lifted_tensors(program)
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == aten.convolution.default and fmt == "int8":
            act, weight = 0, 1
        elif node.target == aten.addmm.default:
            act, weight = 1, 2
        elif node.target == aten.mm.default:
            act, weight = 0, 1
        else:
            continue
        w = _weight_of(node.args[weight], lifted)
        x = node.args[act]
        if w is None or not isinstance(x, torch.fx.Node):
            continue
        val = x.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        found.append((node, act, w))
    return found


_BATCH_NORMS = (aten._native_batch_norm_legit_no_training.default,)  # eval-mode export's
_ACTIVATIONS = (
    aten.relu.default,
    aten.relu_.default,
    aten.hardtanh.default,
    aten.hardtanh_.default,
)


def residual_operands(program, targets, acts) -> list[torch.fx.Node]:
    """The second operand of each residual add whose sum (or its ReLU) is a quantized activation,
    when quantized convolutions (through a batch norm) compute both operands and only the add reads
    them: ResNet's downsample branch. Quantized too (as TensorRT's implicit INT8 quantizes both
    inputs of a residual add), it lets the builder have that convolution write int8 and the block's
    last convolution read its residual in one byte; the identity branch is quantized already."""
    convs = {id(c) for c, _, _ in targets if c.target == aten.convolution.default}
    acts = set(acts)

    def conv_of(t):  # the convolution computing t, directly or through a batch norm, or None
        if t.op == "call_function" and t.target is operator.getitem and t.args[1] == 0:
            bn = t.args[0]
            if bn.op != "call_function" or bn.target not in _BATCH_NORMS:
                return None
            if not isinstance(bn.args[0], torch.fx.Node) or len(bn.args[0].users) != 1:
                return None
            t = bn.args[0]
        return t if id(t) in convs else None

    found = []
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.add.Tensor, aten.add_.Tensor):
            continue
        if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1 or node.args[0] is node.args[1]:
            continue
        total, users = node, list(node.users)
        if node.name not in acts and len(users) == 1 and users[0].target in _ACTIVATIONS:
            total = users[0]
        if total.name not in acts:
            continue
        # The builder fuses the add into the convolution computing its first operand (which must
        # stay unquantized for that); the second, when a convolution computes it too, is quantized.
        first, t = node.args
        if not isinstance(first, torch.fx.Node) or not isinstance(t, torch.fx.Node):
            continue
        if t.name in acts or len(t.users) != 1 or len(first.users) != 1 or conv_of(first) is None:
            continue
        val, shape = t.meta.get("val"), getattr(node.meta.get("val"), "shape", None)
        if not isinstance(val, torch.Tensor) or not val.is_floating_point() or val.shape != shape:
            continue
        if conv_of(t) is not None:
            found.append(t)
    return found


def has_qdq(program) -> bool:
    """Whether the program carries its own quantize/dequantize ops (a QAT or pt2e model)."""
    for node in program.graph.nodes:
        name = str(node.target)
        if "fake_quantize" in name or name.startswith("quantized_decomposed."):
            return True
    return False


def quantize_program(
    program, calibrator: Calibrator, device: torch.device, specs=(), fmt: str = "int8"
):
    """Calibrates and inserts the INT8 or FP8 (``fmt`` "fp8") quantization (module docstring)
    into `program` in place. Returns {parameter placeholder name: fake-quantized tensor} for the
    lowering to use instead of the parameters, and the number of quantized layers."""
    targets = quantizable(program, fmt)
    if not targets:
        what = "linear layer" if fmt == "fp8" else "convolution or linear layer"
        raise _C.KilnError(
            f"kiln.compile: {fmt.upper()} was requested, but the model has no {what} to quantize"
        )
    acts = list(dict.fromkeys(t[0].args[t[1]].name for t in targets))
    residuals = residual_operands(program, targets, acts) if fmt == "int8" else []
    amax = calibrator.ranges(program, acts + [t.name for t in residuals], device, specs)
    graph = program.graph
    by_name = {n.name: n for n in graph.nodes}
    quantized: dict[str, torch.fx.Node] = {}
    # (reader, argument index) of each quantized value: the layers' inputs, the residual
    # adds' operands.
    reads = [(consumer, index) for consumer, index, _ in targets]
    reads += [(next(iter(t.users)), next(iter(t.users)).args.index(t)) for t in residuals]
    for consumer, index in reads:
        x = consumer.args[index]
        if x.name not in quantized:
            with graph.inserting_after(x):
                if fmt == "fp8":
                    scale = max(amax[x.name], 1e-12) / FP8_MAX
                    args = (x, scale, float32_reciprocal(scale))
                    fq = graph.call_function(torch.ops.kiln.fake_quantize_fp8.default, args)
                else:
                    scale = max(amax[x.name], 1e-12) / _QMAX
                    fq = graph.call_function(
                        torch.ops.kiln.fake_quantize_int8.default, (x, scale, -_QMAX, _QMAX)
                    )
            fq.meta["val"] = x.meta["val"]
            fq.meta["stack_trace"] = consumer.meta.get("stack_trace")
            quantized[x.name] = fq
        args = list(consumer.args)
        args[index] = quantized[x.name]
        consumer.args = tuple(args)
    lifted = lifted_tensors(program)
    consumers = {id(t[0]) for t in targets}
    weights: dict[str, torch.Tensor] = {}
    for _, _, name in targets:
        if any(not _is_weight_use(u, consumers) for u in by_name[name].users):
            continue  # the parameter is read elsewhere too: left as it is
        w = lifted[name]
        weights[name] = _fp8_weight(w) if fmt == "fp8" else _fake_quantize_weight(w)
    program.graph_module.recompile()
    return weights, len(targets)


def _is_weight_use(user, consumers: set[int]) -> bool:
    """Whether `user` of a weight is a quantized layer, or a transpose only such layers read."""
    if id(user) in consumers:
        return True
    return user.target in _VIEWS and all(id(u) in consumers for u in user.users)


def _fake_quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel (dim 0) INT8 fake quantization of a weight (values in
    [-127, 127])."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    amax = flat.abs().amax(1).clamp_min(1e-12)
    scales = (amax / _QMAX).to(torch.float32)
    zeros = torch.zeros_like(scales, dtype=torch.int32)
    q = torch.fake_quantize_per_channel_affine(w.detach().float(), scales, zeros, 0, -_QMAX, _QMAX)
    return q.to(w.dtype)


def _fp8_weight(w: torch.Tensor) -> torch.Tensor:
    """A weight on the per-tensor e4m3 grid (scale = max |W| / 448), as the FP8 GEMM holds it."""
    scale = max(float(w.detach().abs().max()), 1e-12) / FP8_MAX
    return fake_quantize_fp8(w.detach(), scale, float32_reciprocal(scale))


__all__ = ["ALGORITHMS", "Calibrator", "has_qdq", "quantize_program", "quantizable"]
