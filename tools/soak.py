"""Soak and thread stress of compiled modules: the figures of docs/reliability.md.

  python3 tools/soak.py soak --inferences 1000000 [--device cuda]
  python3 tools/soak.py stress [--threads 8 --calls 2000] [--device cuda]

soak: one kiln.compile'd module (a small conv net, dynamic batch) called again and again over
a few batch sizes, with host memory (RSS) and device memory (torch's allocated bytes and the
driver's used bytes) sampled every --sample calls. Growth is the end sample against the first
sample after warm-up (--warmup calls); outputs are checked against eager PyTorch every
--check calls. Exit status 1 when memory grew more than --max-growth percent or an output was
wrong.

stress: --threads threads share one compiled module (the supported way: the runtime lends each
concurrent call its own execution context), each on its own CUDA stream, with its own inputs,
every output checked against eager; then the misuse case: threads sharing one native
ExecutionContext, where every call either returns the right answer or is refused with
"another thread is using this execution context".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time

import torch
import torch.nn as nn

import kiln


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1)).softmax(-1)


BATCHES = (1, 2, 4, 8)


def host_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_used_bytes(device: str) -> tuple[int, int]:
    """(torch's allocated bytes, the driver's used bytes of the whole device)."""
    if device != "cuda":
        return 0, 0
    free, total = torch.cuda.mem_get_info()
    return torch.cuda.memory_allocated(), total - free


def compiled_net(device: str):
    torch.manual_seed(0)
    model = SmallNet().eval().to(device)
    spec = kiln.Input(min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 32, 32), max_shape=(8, 3, 32, 32))
    compiled = kiln.compile(model, [spec], device=device, min_block_size=1)
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks, compiled.report.text
    return model, compiled


def growth(first: int, last: int) -> float:
    return 0.0 if first == 0 else 100.0 * (last - first) / first


def soak(args) -> int:
    device = args.device
    model, compiled = compiled_net(device)
    inputs = {b: torch.randn(b, 3, 32, 32, device=device) for b in BATCHES}
    with torch.no_grad():
        expected = {b: model(x) for b, x in inputs.items()}
    samples = []  # (calls, rss, torch allocated, driver used)
    wrong = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(1, args.inferences + 1):
            b = BATCHES[i % len(BATCHES)]
            y = compiled(inputs[b])
            if i % args.check == 0:
                if not torch.allclose(y, expected[b], rtol=1e-3, atol=1e-4):
                    wrong += 1
            if i == args.warmup or i % args.sample == 0 or i == args.inferences:
                if device == "cuda":
                    torch.cuda.synchronize()
                samples.append((i, host_rss_bytes(), *device_used_bytes(device)))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    first = next(s for s in samples if s[0] >= args.warmup)
    last = samples[-1]
    mb = 1 << 20
    print(
        f"soak: {args.inferences} inferences on {device} ({_device_name(device)}) "
        f"in {seconds:.1f} s "
        f"({seconds / args.inferences * 1e6:.1f} us each), batches {BATCHES}, "
        f"{len(samples)} samples, {wrong} wrong outputs of {args.inferences // args.check} checked"
    )
    rows = [("host RSS", 1), ("torch allocated", 2), ("device used", 3)]
    worst = 0.0
    for name, k in rows:
        g = growth(first[k], last[k])
        peak = max(s[k] for s in samples if s[0] >= args.warmup)
        worst = max(worst, g)
        print(
            f"soak: {name}: {first[k] / mb:.1f} MB after {first[0]} calls, {last[k] / mb:.1f} MB "
            f"after {last[0]} (growth {g:+.3f}%), peak {peak / mb:.1f} MB"
        )
    ok = wrong == 0 and worst <= args.max_growth
    print(
        f"soak: {'PASS' if ok else 'FAIL'} (largest growth {worst:+.3f}%, limit {args.max_growth}%)"
    )
    return 0 if ok else 1


def stress(args) -> int:
    device = args.device
    model, compiled = compiled_net(device)
    failures, counts = [], {"ok": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(args.threads)

    def shared_module(seed):
        g = torch.Generator().manual_seed(seed)
        stream = torch.cuda.Stream() if device == "cuda" else None
        barrier.wait()
        for _ in range(args.calls):
            b = BATCHES[int(torch.randint(len(BATCHES), (1,), generator=g))]
            x = torch.randn(b, 3, 32, 32, generator=g).to(device)
            with torch.no_grad(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                y = compiled(x)
                want = model(x)
                ok = torch.allclose(y, want, rtol=1e-3, atol=1e-4)
            with lock:
                counts["ok"] += ok
                if not ok:
                    failures.append(seed)

    start = time.perf_counter()
    _run_threads(args.threads, shared_module)
    seconds = time.perf_counter() - start
    total = args.threads * args.calls
    print(
        f"stress: {args.threads} threads x {args.calls} calls of one compiled module on {device} "
        f"({_device_name(device)}): {counts['ok']} of {total} outputs right, "
        f"{len(failures)} wrong, {seconds:.1f} s"
    )

    # Misuse: one native ExecutionContext shared by every thread.
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 256))
    net.mark_output(
        net.add_activation(net.add_matmul(x, net.add_constant(torch.eye(256).numpy())), "relu"), "y"
    )
    config = kiln.BuilderConfig(device=device)
    config.add_optimization_profile({"x": ((1, 256), (64, 256), (512, 256))})
    ctx = kiln.Engine(kiln.Builder().build(net, config), device=device).create_execution_context()
    misuse = {"ok": 0, "refused": 0, "wrong": 0, "other": 0}

    def shared_context(seed):
        g = torch.Generator().manual_seed(seed)
        barrier.wait()
        for _ in range(args.calls):
            xs = torch.randn(int(torch.randint(1, 512, (1,), generator=g)), 256, generator=g)
            try:
                y = ctx.execute({"x": xs.to(device)})["y"]
                if device == "cuda":
                    torch.cuda.synchronize()
                key = "ok" if torch.allclose(y.cpu(), xs.relu(), atol=1e-5) else "wrong"
            except kiln.KilnError as e:
                key = (
                    "refused"
                    if "another thread is using this execution context" in str(e)
                    else "other"
                )
            with lock:
                misuse[key] += 1

    _run_threads(args.threads, shared_context)
    print(
        f"stress: {args.threads} threads x {args.calls} calls sharing one ExecutionContext "
        "(misuse): "
        f"{misuse['ok']} right, {misuse['refused']} refused with the clear error, "
        f"{misuse['wrong']} wrong, {misuse['other']} other errors"
    )
    ok = not failures and misuse["wrong"] == 0 and misuse["other"] == 0
    print(f"stress: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _run_threads(n, target):
    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "CPU reference backend"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["soak", "stress"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--inferences", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=50_000)
    parser.add_argument("--check", type=int, default=1_000)
    parser.add_argument("--max-growth", type=float, default=1.0, help="percent")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    args.warmup = min(args.warmup, args.inferences)
    return soak(args) if args.mode == "soak" else stress(args)


if __name__ == "__main__":
    raise SystemExit(main())
