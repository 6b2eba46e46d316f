"""Build and run plans in tests: a Network with a BuilderConfig on a device, run on torch inputs,
outputs back as CPU torch tensors; and the backends a test runs on, as pytest parameters."""

import numpy as np
import pytest
import torch

import kiln

# The backends a per-backend test runs on: the CPU reference backend, and CUDA (marked gpu: it
# skips visibly where no GPU is visible and runs on the GPU machine).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def per_device(cpu=(), cuda=()):
    """pytest parameter sets (device, *case) for a test whose backends run different cases: `cpu`
    and `cuda` list each backend's cases (a tuple per case, or one value); the CUDA ones carry the
    gpu mark, as in DEVICES. Ids read "cuda-float16-(3, 65)"."""

    def row(device, case, marks=()):
        values = (device, *(case if isinstance(case, tuple) else (case,)))
        name = "-".join(str(v).removeprefix("torch.") for v in values)
        return pytest.param(*values, marks=marks, id=name)

    return [row("cpu", c) for c in cpu] + [row("cuda", c, pytest.mark.gpu) for c in cuda]


def device_of(target):
    """The torch device that feeds an engine built for `target`."""
    return "cuda" if target == "cuda" else "cpu"


def builder_config(target="cpu", level=None, profile=None, precisions=None, pin=None, **options):
    """A BuilderConfig for `target`. level: the optimization level (None: the default); profile: an
    optimization profile ({input: (min, opt, max)}) or a list of them; precisions as
    BuilderConfig takes them; pin: {layer name: dtype} for set_layer_precision; options: any other
    BuilderConfig keyword (tactic_timing, workspace_size, ...)."""
    config = kiln.BuilderConfig(
        device=target, optimization_level=level, precisions=precisions, **options
    )
    for p in [profile] if isinstance(profile, dict) else profile or []:
        if p:
            config.add_optimization_profile(p)
    for name, dtype in (pin or {}).items():
        config.set_layer_precision(name, dtype)
    return config


def build_plan(net, target="cpu", **config):
    """The Plan of `net` for `target`; `config`: builder_config's keywords."""
    return kiln.Builder().build(net, builder_config(target, **config))


def build_engine(net, target="cpu", **config):
    """An Engine on `target` for `net` (build_plan's keywords)."""
    return kiln.Engine(build_plan(net, target, **config), device=target)


def as_cpu_tensor(value):
    """An engine output (a torch tensor on either device, or a numpy array): a CPU torch tensor."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    return torch.from_numpy(np.array(value))


def run_plan(plan, feed, target="cpu"):
    """Runs `plan` on `target` with `feed` ({input: torch tensor}, moved to the target's device);
    returns {output: CPU torch tensor}."""
    ctx = kiln.Engine(plan, device=target).create_execution_context()
    out = ctx.execute({k: v.to(device_of(target)) for k, v in feed.items()})
    if target == "cuda":
        torch.cuda.synchronize()
    return {k: as_cpu_tensor(v) for k, v in out.items()}


def run_network(net, feed, target="cpu", **config):
    """build_plan(net, target, **config), run on `feed` (run_plan)."""
    return run_plan(build_plan(net, target, **config), feed, target)


def run_layer(add_layer, inputs, target, dynamic=False, **config):
    """add_layer(net, *input_tensors) -> the output (a Layer or Tensor) or a list of outputs; builds
    the network around `inputs` (torch tensors, named in0, in1, ...) and returns the output as a
    CPU torch tensor, or a list of them.

    dynamic: True declares dim 0 of the first input dynamic (when its rank is >= 1); a collection
    of indices does so for those inputs. Each gets a profile from 1 to twice the given size, so the
    engine runs with shapes resolved at run time. config: builder_config's keywords (level, ...).
    """
    dynamic_inputs = {0} if dynamic is True else set(dynamic or ())
    net = kiln.Network()
    tensors, profile = [], {}
    for i, t in enumerate(inputs):
        name = f"in{i}"
        shape = list(t.shape)
        if shape and i in dynamic_inputs:
            lo, hi = min(1, shape[0]), max(1, 2 * shape[0])
            profile[name] = ([lo, *shape[1:]], list(shape), [hi, *shape[1:]])
            shape[0] = -1
        tensors.append(net.add_input(name, t.dtype, shape))
    outputs = add_layer(net, *tensors)
    several = isinstance(outputs, (list, tuple))
    names = [f"out{k}" for k in range(len(outputs))] if several else ["out"]
    for name, out in zip(names, outputs if several else [outputs], strict=True):
        net.mark_output(out, name)
    got = run_network(
        net, {f"in{i}": t for i, t in enumerate(inputs)}, target, profile=profile, **config
    )
    return [got[name] for name in names] if several else got["out"]


# Tolerances for a result computed in float32 and rounded once to the output dtype. float32:
# a few ulp of the math library on top of float32 rounding (ulp 6e-8). float16/bfloat16: one
# rounding step (ulp 2^-10 / 2^-7) may land on either side, so allow about two ulp.
TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
}


def run_kiln_cli(*args, timeout: float | None = None):
    """`python -m kiln ARGS` in a fresh process that imports this checkout's kiln."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import kiln

    py_dir = str(Path(kiln.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([py_dir, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "kiln", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


# ---- crafted plans ----------------------------------------------------------------------------

_PLAN_HEADER_BYTES = 8 + 6 * 4 + 8  # magic, six version fields, payload size (core/plan.cpp)
_M64 = (1 << 64) - 1


def _plan_checksum(data: bytes) -> int:
    """core/plan.cpp's plan_checksum: four FNV-style lanes over 8-byte words, then the tail."""
    basis, prime = 1469598103934665603, 1099511628211
    lanes = [basis, basis ^ 1, basis ^ 2, basis ^ 3]
    words = np.frombuffer(data[: len(data) // 32 * 32], dtype="<u8").reshape(-1, 4)
    for row in words.tolist():
        for k in range(4):
            lane = ((lanes[k] ^ row[k]) * prime) & _M64
            lanes[k] = lane ^ (lane >> 29)
    h = basis
    for lane in lanes:
        h = ((h ^ lane) * prime) & _M64
    for byte in data[len(words) * 32 :]:
        h = ((h ^ byte) * prime) & _M64
    return ((h ^ len(data)) * prime) & _M64


_CHECKSUM_BLOCK = 16 << 20  # core/plan.h kChecksumBlockBytes


def _payload_checksum(body: bytes, format_version: int) -> int:
    """core/plan.cpp's plan_payload_checksum: format 4 hashes 16 MiB blocks, then their hashes."""
    if format_version < 4:
        return _plan_checksum(body)
    blocks = max(1, -(-len(body) // _CHECKSUM_BLOCK))
    hashes = b"".join(
        _plan_checksum(body[b * _CHECKSUM_BLOCK : (b + 1) * _CHECKSUM_BLOCK]).to_bytes(8, "little")
        for b in range(blocks)
    )
    return _plan_checksum(hashes)


def seal_plan(plan: bytes) -> bytes:
    """Serialized plan bytes with the checksum field recomputed, as a crafted file would carry
    them: tests of the parser's own checks edit a plan's body and seal it."""
    header, body = plan[:_PLAN_HEADER_BYTES], plan[_PLAN_HEADER_BYTES + 8 :]
    version = int.from_bytes(header[8:12], "little")
    inner = _payload_checksum(body, version).to_bytes(8, "little")
    return header + _plan_checksum(header + inner).to_bytes(8, "little") + body


def crafted_plan(edit) -> bytes:
    """The serialized plan of y = a_in @ b^T (inputs "a_in", "b"; layer "mm"; output "y") with
    `edit` (bytes -> bytes) applied to it and the checksum made to match."""
    net = kiln.Network()
    a = net.add_input("a_in", "float32", (2, 3))
    b = net.add_input("b", "float32", (4, 3))
    net.mark_output(net.add_matmul(a, b, transpose_b=True, name="mm"), "y")
    good = build_plan(net).serialize()
    assert seal_plan(good) == good, "layer_util's copy of plan_checksum no longer matches the plan"
    crafted = edit(good)
    assert crafted != good, "the edit changed nothing"
    return seal_plan(crafted)
