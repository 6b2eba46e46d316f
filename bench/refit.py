"""Refit on the GPU: how long kiln.refit takes for a compiled model, and whether the refitted
module computes what a fresh compile with the new weights computes (bit for bit, with the fresh
build's tactics taken from the first build's timing cache).

    python3 bench/refit.py                          # resnet50 and bert, FP16, batch 1
    python3 bench/refit.py --models resnet50 --json refit.json

Targets (issue 19, on the H200): resnet50 FP16 <= 50 ms, bert-base FP16 <= 100 ms; a second
kiln.compile of resnet50 in a new process with a warm engine cache <= 1 s (--cache-models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
sys.path.insert(0, str(ROOT / "bench"))
import models as zoo  # noqa: E402

import kiln  # noqa: E402

TARGET_MS = {"resnet50": 50.0, "bert": 100.0}


def perturbed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every float tensor changed (a training step's worth)."""
    out = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            noise = torch.randn_like(t) * 0.01
            t = (t.abs() + noise.abs()) if "running_var" in name else t + noise
        out[name] = t
    return out


def run(name: str, device: torch.device, repeats: int) -> dict:
    entry = zoo.get(name)
    model = entry.build().to(device).half().eval()
    inputs = entry.inputs(1, device)
    inputs = tuple(x.half() if x.is_floating_point() else x for x in inputs)
    cache = Path(tempfile.mkdtemp()) / "timing.cache"

    def build():  # FP16, tactics shared through the timing cache, never from the engine cache
        return kiln.compile(
            model,
            list(inputs),
            enabled_precisions={torch.float16},
            timing_cache=str(cache),
            cache_dir=False,
        )

    t0 = time.perf_counter()
    compiled = build()
    build_s = time.perf_counter() - t0
    state = perturbed(model)
    times, messages = [], []
    kiln.set_log_level("info")
    kiln.set_log_sink(lambda severity, message: messages.append(message))
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = kiln.refit(compiled, state)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    kiln.set_log_sink(None)
    kiln.set_log_level("warning")
    breakdown = [m for m in messages if m.startswith("refit:")][-1:]
    with torch.no_grad():
        refitted = compiled(*inputs)
        model.load_state_dict(state)
        fresh = build()(*inputs)
        eager = model(*inputs)
    refitted, fresh, eager = (zoo.first_tensor(t).float() for t in (refitted, fresh, eager))
    cos = torch.nn.functional.cosine_similarity(refitted.flatten(), eager.flatten(), dim=0)
    return {
        "model": name,
        "precision": "fp16",
        "build_s": round(build_s, 2),
        "refit_ms_median": round(statistics.median(times), 2),
        "refit_ms_min": round(min(times), 2),
        "target_ms": TARGET_MS.get(name),
        "engines": result.engines,
        "weights": result.weights,
        "bit_identical_to_fresh_build": bool(torch.equal(refitted, fresh)),
        "max_abs_diff_to_fresh_build": float((refitted - fresh).abs().max()),
        "cosine_to_eager": round(float(cos), 6),
        "last_refit_engine_log": breakdown[0] if breakdown else "",
    }


COMPILE_IN_NEW_PROCESS = """
import sys, time, torch
sys.path.insert(0, {root!r} + "/py"); sys.path.insert(0, {root!r} + "/bench")
import models as zoo, kiln
entry = zoo.get({name!r})
model = entry.build().cuda().half().eval()
inputs = [x.half() if x.is_floating_point() else x for x in entry.inputs(1, torch.device("cuda"))]
torch.cuda.synchronize()
t0 = time.perf_counter()
compiled = kiln.compile(model, inputs, enabled_precisions={{torch.float16}}, cache_dir={cache!r})
torch.cuda.synchronize()
print("COMPILE_S", time.perf_counter() - t0)
"""


def cache_row(name: str) -> dict:
    """kiln.compile of `name` FP16 in a new process: once to fill an empty engine cache, once
    more (another process) with it warm."""
    cache = tempfile.mkdtemp()
    script = COMPILE_IN_NEW_PROCESS.format(root=str(ROOT), name=name, cache=cache)
    seconds = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        seconds.append(float(out.split("COMPILE_S")[-1].split()[0]))
    return {
        "model": name,
        "cold_compile_s": round(seconds[0], 2),
        "warm_cache_compile_s": round(seconds[1], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="resnet50,bert")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache-models", default="resnet50")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/refit.py: no CUDA GPU; refit timing is measured on the GPU")
        return 1
    rows = [run(m, torch.device("cuda"), args.repeats) for m in args.models.split(",") if m]
    print(f"GPU: {torch.cuda.get_device_name()}")
    print(
        "| model | build s | refit ms (median / min) | target ms | weights "
        "| bit-identical | cosine vs eager |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['model']} fp16 | {r['build_s']} | {r['refit_ms_median']} / {r['refit_ms_min']} "
            f"| {r['target_ms']} | {r['weights']} | {r['bit_identical_to_fresh_build']} "
            f"(max diff {r['max_abs_diff_to_fresh_build']:.3g}) | {r['cosine_to_eager']} |"
        )
    cache_rows = [cache_row(m) for m in args.cache_models.split(",") if m]
    print("| model | kiln.compile, new process, empty cache s | same, warm cache s (target 1 s) |")
    print("|---|---:|---:|")
    for r in cache_rows:
        print(f"| {r['model']} fp16 | {r['cold_compile_s']} | {r['warm_cache_compile_s']} |")
    for r in rows:
        print(f"{r['model']}: total {r['refit_ms_min']} ms; engine {r['last_refit_engine_log']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"refit": rows, "cache": cache_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
