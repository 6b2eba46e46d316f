"""Host-side costs of Kiln engines, measurable without a GPU (reference backend):

* plan load: Plan.deserialize and Engine creation from a resnet50-size plan
  (kiln.compile(torchvision resnet50, device="cpu")), per DESIGN's "plan load <= 100 ms";
* per-call overhead: ExecutionContext.enqueue on a one-layer network, and
  torch.ops.kiln.execute_engine (lease, shapes, addresses, output allocation) around it.

Run: PYTHONPATH=py python3 bench/engine_overhead.py [--skip-resnet]
On a GPU machine, --device cuda times the same on the CUDA backend (graphs included), and
--model NAME (a bench/models.py entry, e.g. resnet50, bert, vit_b_16) reports the FP16 batch-1
build time (cold and with a warm timing cache), latency with CUDA graphs on and off, and peak
GPU memory next to eager PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kiln
from kiln import _C, runtime
from kiln.dtypes import backend_name
from kiln.network import Builder, BuilderConfig, Network


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def resnet50_plan_bytes() -> bytes:
    """The plan of kiln.compile(resnet50, device="cpu"): captured from the builder."""
    import torchvision

    plans = []
    original = Builder.build

    def capture(self, network, config=None):
        plan = original(self, network, config)
        plans.append(plan)
        return plan

    Builder.build = capture
    try:
        model = torchvision.models.resnet50(weights=None).eval()
        kiln.compile(model, [torch.randn(1, 3, 224, 224)], device="cpu")
    finally:
        Builder.build = original
    largest = max(plans, key=lambda p: len(p.serialize()))
    return bytes(largest.serialize())


def plan_load(device: str) -> None:
    data = resnet50_plan_bytes()
    backend = backend_name(device)  # the engine core's word: "cuda" or "reference"
    deserialize = _best_of(lambda: _C.Plan.deserialize(data), 5)
    plan = _C.Plan.deserialize(data)
    create = _best_of(lambda: _C.Engine(plan, backend), 5)
    total = _best_of(lambda: _C.Engine(_C.Plan.deserialize(data), backend), 5)
    torch_engine = _best_of(lambda: torch.classes.kiln.Engine(data, backend), 3)
    print(f"resnet50 plan: {len(data) / 1e6:.1f} MB")
    print(f"  Plan.deserialize          {deserialize * 1e3:8.2f} ms")
    print(f"  Engine({backend}) from Plan {create * 1e3:8.2f} ms")
    print(f"  deserialize + Engine      {total * 1e3:8.2f} ms")
    print(f"  torch.classes.kiln.Engine {torch_engine * 1e3:8.2f} ms (bytes copy included)")


def trivial_engine(device: str):
    net = Network()
    x = net.add_input("x", "float32", (1, 8))
    net.mark_output(net.add_activation(x, "relu"), "y")
    cfg = BuilderConfig(device="cuda" if device == "cuda" else "cpu")
    return Builder().build(net, cfg)


def per_call(device: str, n: int = 20000) -> None:
    plan = trivial_engine(device)
    backend = backend_name(device)  # the engine core's word: "cuda" or "reference"
    engine = _C.Engine(plan, backend)
    ctx = engine.create_execution_context()
    x = torch.randn(1, 8, device=device)
    y = torch.empty(1, 8, device=device)
    ctx.set_tensor_address("x", x.data_ptr())
    ctx.set_tensor_address("y", y.data_ptr())

    def loop():
        for _ in range(n):
            ctx.enqueue(0)

    t = _best_of(loop, 3)
    print(f"ExecutionContext.enqueue (pybind call included): {t / n * 1e6:.2f} us/call")

    module = runtime.EngineModule(plan, device)
    eng = module.engine
    op = torch.ops.kiln.execute_engine

    def loop_op():
        for _ in range(n):
            op([x], eng)

    samples = [_best_of(loop_op, 1) / n * 1e6 for _ in range(5)]
    print(
        f"torch.ops.kiln.execute_engine: {min(samples):.2f} us/call "
        f"(median {statistics.median(samples):.2f})"
    )


def model_report(name: str) -> None:
    import os
    import sys
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import models

    entry = models.get(name)
    model = entry.build().cuda().half()
    inputs = tuple(
        t.cuda().half() if t.is_floating_point() else t.cuda()
        for t in entry.inputs(1, torch.device("cuda"))
    )
    cache = os.path.join(tempfile.mkdtemp(), "timing.cache")
    times = {}
    for label in ("cold", "warm cache"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        compiled = kiln.compile(
            model, list(inputs), enabled_precisions={torch.float16}, timing_cache=cache
        )
        times[label] = time.perf_counter() - t
        torch.cuda.synchronize()
        kiln_static = torch.cuda.memory_allocated() - before  # weights (+ torch-side leftovers)
    print(
        f"{name} FP16 build: cold {times['cold']:.1f} s, "
        f"warm timing cache {times['warm cache']:.1f} s"
    )

    def latency_ms(fn, iters: int = 200) -> float:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / iters

    def peak_above(fn) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    engines = [m.engine for m in compiled.modules() if isinstance(m, runtime.EngineModule)]
    with torch.no_grad():
        # Kiln: its weights, then arena/workspace/staging of the first call and its outputs.
        kiln_peak = kiln_static + peak_above(lambda: compiled(*inputs))
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        eager_peak = weights + peak_above(lambda: model(*inputs))
        print(
            f"  peak GPU memory: kiln {kiln_peak / 2**20:.1f} MiB, "
            f"eager {eager_peak / 2**20:.1f} MiB"
        )
        for graphs in (True, False):
            for e in engines:
                e.set_cuda_graphs(graphs)
            ms = latency_ms(lambda: compiled(*inputs))
            print(f"  kiln, CUDA graphs {'on ' if graphs else 'off'}: {ms:.3f} ms")
        print(f"  eager: {latency_ms(lambda: model(*inputs)):.3f} ms")
        for e in engines:
            print(f"  engine graph stats: {dict(e.graph_stats())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--model", help="bench/models.py entry: FP16 batch-1 build, latency, memory")
    args = p.parse_args()
    runtime.load_library()
    if args.model:
        model_report(args.model)
        return
    per_call(args.device)
    if not args.skip_resnet:
        plan_load(args.device)


if __name__ == "__main__":
    main()
