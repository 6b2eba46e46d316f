"""`kiln demo`: the vertical slice end to end.

Builds a small MLP (input -> matmul -> bias add -> relu -> matmul -> bias add) with the native
network API, builds a plan, round-trips it through bytes, runs it on every available device and
compares with numpy (float64).
"""

from __future__ import annotations

import time

import numpy as np

import kiln


def build_mlp(rng: np.random.Generator, d_in=256, d_hidden=512, d_out=128):
    w1 = rng.standard_normal((d_in, d_hidden), dtype=np.float32) / np.float32(np.sqrt(d_in))
    b1 = rng.standard_normal((1, d_hidden), dtype=np.float32)
    w2 = rng.standard_normal((d_hidden, d_out), dtype=np.float32) / np.float32(np.sqrt(d_hidden))
    b2 = rng.standard_normal((1, d_out), dtype=np.float32)
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, d_in))
    h = net.add_matmul(x, net.add_constant(w1, "w1"), name="fc1")
    h = net.add_elementwise(h, net.add_constant(b1, "b1"), "add", name="fc1_bias")
    h = net.add_activation(h, "relu", name="relu1")
    y = net.add_matmul(h, net.add_constant(w2, "w2"), name="fc2")
    y = net.add_elementwise(y, net.add_constant(b2, "b2"), "add", name="fc2_bias")
    net.mark_output(y, "y")

    def reference(xv: np.ndarray) -> np.ndarray:
        hv = np.maximum(xv.astype(np.float64) @ w1 + b1, 0)
        return hv @ w2 + b2

    return net, reference, d_in


def run(batch: int = 32, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    net, reference, d_in = build_mlp(rng)
    devices = ["cpu"] + (["cuda"] if kiln.cuda_available() else [])
    rows = []
    for device in devices:
        config = kiln.BuilderConfig(device=device)
        config.add_optimization_profile({"x": ((1, d_in), (batch, d_in), (4 * batch, d_in))})
        t0 = time.perf_counter()
        plan = kiln.Builder().build(net, config)
        build_ms = (time.perf_counter() - t0) * 1e3
        engine = kiln.Engine(kiln.Plan.deserialize(plan.serialize()), device=device)
        ctx = engine.create_execution_context()
        x = rng.standard_normal((batch, d_in), dtype=np.float32)
        y = ctx.execute({"x": x})["y"]
        err = float(np.max(np.abs(y - reference(x))))
        rows.append(
            (device, plan.num_layers, plan.arena_bytes, build_ms, err, ", ".join(plan.kernels))
        )
    print(f"Kiln {kiln.__version__} demo: MLP 256-512-128, batch {batch}, float32")
    print(
        f"{'device':<10} {'layers':>6} {'arena B':>8} {'build ms':>9} {'max abs err':>12}  kernels"
    )
    ok = True
    for device, layers, arena, build_ms, err, kernels in rows:
        print(f"{device:<10} {layers:>6} {arena:>8} {build_ms:>9.2f} {err:>12.2e}  {kernels}")
        ok &= err < 1e-4
    if not kiln.cuda_available():
        print("(no CUDA GPU visible: ran on the CPU reference backend only)")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1
