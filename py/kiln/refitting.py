"""kiln.refit (kiln.refitting.refit): new weights for a compiled module without rebuilding its
engines (docs/refit.md).

Each engine knows the weights its constants derive from, by their qualified names
("layer1.0.conv1.weight"), and how the builder transformed them (BatchNorm folding, transposes,
horizontal GEMM merging, FP16 conversion, channels-last layout): refit replays those transforms
on the new values and writes the results in place. PyTorch segments read their weights as
buffers of the compiled module, which refit updates too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from kiln import _C
from kiln.dtypes import torch_dtype


@dataclass
class RefitInfo:
    """What kiln.refit needs beyond the engines, recorded by kiln.compile (export path).

    names: every parameter and buffer the model was compiled with (its state dict's keys).
    torch_weights: {buffer of the compiled graph: qualified name} for weights PyTorch code reads.
    baked: {qualified name: value} of state the engines hold as plain constants (integer buffers):
    refit checks that they did not change, since it cannot replay them.
    blocked: why this module cannot be refitted ("" when it can).
    """

    names: frozenset
    torch_weights: dict = field(default_factory=dict)
    baked: dict = field(default_factory=dict)
    blocked: str = ""


@dataclass
class RefitResult:
    engines: int  # engines refitted
    weights: int  # weights written into engines
    torch_weights: int  # buffers of PyTorch segments updated
    seconds: float


def _listed(names) -> str:
    names = sorted(names)
    text = ", ".join(repr(n) for n in names[:8])
    return text + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def state_of(source) -> dict[str, torch.Tensor]:
    """{qualified name: tensor} of a model (its parameters and buffers) or a state dict."""
    if isinstance(source, torch.nn.Module):
        return dict(source.state_dict(keep_vars=True))
    if isinstance(source, dict):
        return dict(source)
    raise TypeError(
        f"kiln.refit takes a torch.nn.Module or a state dict, got {type(source).__name__}"
    )


def refit(module, weights) -> RefitResult:
    """Sets the weights of `module` (what kiln.compile returned) from a model or a state dict
    with the same parameter names and shapes, without rebuilding: every engine is refitted in
    place, and the weights its PyTorch code reads are copied. The module's outputs are then those
    of a fresh compile with the new weights (the same engines: same layers and kernels).

    Refused, by name: missing, extra or reshaped parameters; changed integer buffers that the
    engines hold as constants; modules compiled with INT8/FP8 calibration or by the TorchScript
    frontend. Not while the module runs on another thread."""
    from kiln import runtime

    start = time.perf_counter()
    info = getattr(module, "refit_info", None)
    if info is None:
        raise _C.KilnError(
            "kiln.refit: this module has no refit information: refit the module kiln.compile "
            "returned (export path, the default for nn.Modules); a module compiled with "
            "ir='torchscript' or loaded from a file can be compiled again instead"
        )
    if info.blocked:
        raise _C.KilnError(f"kiln.refit: this module cannot be refitted: {info.blocked}")
    state = state_of(weights)
    missing = info.names - state.keys()
    extra = state.keys() - info.names
    if missing:
        raise _C.KilnError(
            f"kiln.refit: {len(missing)} parameter(s)/buffer(s) of the compiled model not given: "
            f"{_listed(missing)}; pass the whole state dict"
        )
    if extra:
        raise _C.KilnError(
            f"kiln.refit: {len(extra)} parameter(s)/buffer(s) the compiled model does not have: "
            f"{_listed(extra)}; a model with other parameters needs a new kiln.compile"
        )
    for name, value in info.baked.items():
        new = state[name]
        if new.shape != value.shape or not torch.equal(new.detach().cpu(), value):
            raise _C.KilnError(
                f"kiln.refit: buffer {name!r} changed, but the engines hold it as a constant of "
                "their structure (an integer buffer); compile the model again"
            )
    buffers = dict(module.graph_module.named_buffers())
    for attr, name in info.torch_weights.items():
        if state[name].shape != buffers[attr].shape:
            raise _C.KilnError(
                f"kiln.refit: {name!r} has shape {tuple(state[name].shape)}, the compiled model "
                f"{tuple(buffers[attr].shape)}; a new shape needs a new kiln.compile"
            )
    engines = runtime.engines(module)
    count = sum(_refit_engine(engine, state) for engine in engines)
    with torch.no_grad():
        for attr, name in info.torch_weights.items():
            buffers[attr].copy_(state[name])
    return RefitResult(len(engines), count, len(info.torch_weights), time.perf_counter() - start)


def refit_engines(module, weights) -> int:
    """Refits every Kiln engine `module` runs (a compiled or loaded module, either format) from
    `weights`: a state dict, an nn.Module, or the path of a .safetensors file or a torch.save'd
    state dict. Each engine takes the weights it names (a missing one is an error naming it);
    PyTorch code in the module is left as it is. Returns the number of engines."""
    from kiln import runtime

    if isinstance(weights, str | os.PathLike):
        path = os.fspath(weights)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            weights = load_file(path)
        else:
            weights = torch.load(path, map_location="cpu", weights_only=True)
    state = state_of(weights)
    engines = runtime.engines(module)
    weighted = [engine for engine in engines if engine.weight_names()]
    if engines and not weighted:
        raise _C.KilnError(
            "kiln.refit: no engine of this module has refittable weights (built by a Kiln without "
            "refit, or from constants no frontend marked as weights): compile the model again"
        )
    for engine in weighted:
        _refit_engine(engine, state)
    return len(engines)


def host_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors detached, contiguous, float64 narrowed to float32 (as engines hold them) and on
    the CPU: those on a GPU come over in one copy (one synchronization, not one per weight), into
    page-locked memory from torch's pinned-memory cache (a pageable copy of a CNN's weights was
    most of its refit: resnet50 FP16's 51 MB took 33 ms on an H200 machine)."""
    from kiln.fx_lowering import NARROWED

    out: list = [None] * len(tensors)
    on_device: dict = {}
    for i, t in enumerate(tensors):
        t = t.detach()
        if t.dtype in NARROWED:
            t = t.to(NARROWED[t.dtype])
        if t.device.type == "cpu":
            out[i] = t.contiguous()
        else:
            on_device.setdefault(t.device, []).append((i, t.contiguous()))
    for group in on_device.values():
        # Wider elements first: every slice of the byte buffer stays aligned for its dtype.
        group.sort(key=lambda it: -it[1].element_size())
        on_gpu = torch.cat([t.reshape(-1).view(torch.uint8) for _, t in group])
        pinned = on_gpu.device.type == "cuda"
        flat = torch.empty(on_gpu.numel(), dtype=torch.uint8, pin_memory=pinned)
        flat.copy_(on_gpu, non_blocking=pinned)
        if pinned:
            torch.cuda.current_stream(on_gpu.device).synchronize()
        at = 0
        for i, t in group:
            n = t.numel() * t.element_size()
            out[i] = flat[at : at + n].view(t.dtype).view(t.shape)
            at += n
    return out


def _narrowed(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, contiguous, float64 narrowed to float32 (as engines hold it), where it is."""
    from kiln.fx_lowering import NARROWED

    t = t.detach()
    return (t.to(NARROWED[t.dtype]) if t.dtype in NARROWED else t).contiguous()


def _refit_engine(engine, state: dict) -> int:
    names = engine.weight_names()
    if not names:  # an engine of activations only (its module's weights are in other engines)
        return 0
    missing = [n for n in names if n not in state]
    if missing:
        raise _C.KilnError(
            f"kiln.refit: {len(missing)} weight(s) of an engine not given: {_listed(missing)}"
        )
    # Weights the engine reads through a transform (BatchNorm folding, a layout, a dtype) come to
    # the host in one copy; the others stay where they are: on the engine's GPU they are copied
    # device to device.
    on_host = set(engine.host_weight_names())
    host = [n for n in names if n in on_host]
    hosted = dict(zip(host, host_tensors([state[n] for n in host]), strict=True))
    values = []
    kept = [hosted[n] if n in hosted else _narrowed(state[n]) for n in names]
    for name, dtype, value in zip(names, engine.weight_dtypes(), kept, strict=True):
        if value.dtype != torch_dtype(dtype):
            raise _C.KilnError(
                f"kiln.refit: {name!r} is {value.dtype}, the engine was built from "
                f"{torch_dtype(dtype)}: pass the weights in the model's dtypes"
            )
        values.append(value)
    try:
        engine.refit(names, values)
    except RuntimeError as error:  # the engine's error crosses torch as a RuntimeError
        raise _C.KilnError(str(error).split("\nException raised from")[0]) from error
    return len(names)


def refit_info(lowered, program, graph_module, names, calibrated: bool) -> RefitInfo:
    """The RefitInfo of a module kiln.compile assembled from `lowered` (FxLowering); `names`:
    the model's state dict keys (tied weights under each of their names)."""
    from kiln.fx_lowering import weight_names

    fqn_of = weight_names(program)
    sources = getattr(graph_module, "_kiln_param_sources", {})
    torch_weights = {
        attr: fqn_of[placeholder] for attr, placeholder in sources.items() if placeholder in fqn_of
    }
    used = {n.name for n in lowered.fx.nodes if n.op == "placeholder" and n.users}
    baked = {
        fqn: weight_tensor_clone(program.state_dict[fqn])
        for placeholder, fqn in fqn_of.items()
        if placeholder in used
        and placeholder not in lowered.weights
        and placeholder not in sources.values()
    }
    blocked = (
        "its weights were quantized for INT8/FP8 by calibration (refit of calibrated weights is "
        "not supported yet)"
        if calibrated
        else ""
    )
    return RefitInfo(frozenset(names), torch_weights, baked, blocked)


def weight_tensor_clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().clone()
