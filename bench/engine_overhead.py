"""Host-side costs of Kiln engines, measurable without a GPU (reference backend):

* plan load: Plan.deserialize and Engine creation from a resnet50-size plan
  (kiln.compile(torchvision resnet50, device="cpu")), per DESIGN's "plan load <= 100 ms";
* per-call overhead: ExecutionContext.enqueue on a one-layer network, and
  torch.ops.kiln.execute_engine (lease, shapes, addresses, output allocation) around it.

Run: PYTHONPATH=py python3 bench/engine_overhead.py [--skip-resnet]
On a GPU machine, --device cuda times the same on the CUDA backend (graphs included).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kiln
from kiln import _C, runtime
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
    backend = "cuda" if device == "cuda" else "reference"
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
    cfg = BuilderConfig(target="cuda" if device == "cuda" else "reference")
    return Builder().build(net, cfg)


def per_call(device: str, n: int = 20000) -> None:
    plan = trivial_engine(device)
    backend = "cuda" if device == "cuda" else "reference"
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

    module = runtime.EngineModule(plan, backend)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--skip-resnet", action="store_true")
    args = p.parse_args()
    runtime.load_library()
    per_call(args.device)
    if not args.skip_resnet:
        plan_load(args.device)


if __name__ == "__main__":
    main()
