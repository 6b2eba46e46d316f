"""`kiln demo`: the main job, end to end, on a torchvision model (random weights, no downloads).

1. kiln.compile the model (FP16 engines on a GPU, the CPU reference backend otherwise) and print
   the compile report;
2. check the compiled module's output against eager PyTorch (FP32);
3. on a GPU: a small speed table, Kiln against eager PyTorch and torch.compile, same run
   (on the CPU: a note that speed needs a GPU);
4. save the compiled module in both formats (ExportedProgram .pt2 and TorchScript) and load each
   in a fresh Python process, which checks its output again.

``kiln demo --model resnet18 --size 224 --batch 1``; ``--no-peer`` skips torch.compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

RELOAD = textwrap.dedent(
    """
    import sys, torch, kiln
    path, inputs, expected, device = sys.argv[1:5]
    module = kiln.load(path)
    x = torch.load(inputs).to(device)
    with torch.no_grad():
        y = module(x).float().cpu()
    want = torch.load(expected)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), want.flatten(), dim=0).item()
    print(f"{cos:.6f}")
    """
)


def _cosine(a, b) -> float:
    import torch

    return torch.nn.functional.cosine_similarity(
        a.float().flatten().cpu(), b.float().flatten().cpu(), dim=0
    ).item()


def run(model: str = "resnet18", batch: int = 1, size: int = 224, peer: bool = True) -> int:
    import torch

    import kiln
    from kiln.runner import median_latency_ms

    try:
        import torchvision
    except ImportError:
        print("kiln demo needs torchvision (pip install torchvision)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and kiln.cuda_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = "fp16" if cuda else "fp32"
    torch.manual_seed(0)
    net = torchvision.models.get_model(model, weights=None).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    print(
        f"Kiln {kiln.__version__} demo: torchvision {model} (random weights), input "
        f"{batch}x3x{size}x{size}, {precision} engines on {device.type}"
    )

    t0 = time.perf_counter()
    compiled = kiln.compile(net, [x], enabled_precisions={precision}, device=device.type)
    print(f"\n== compiled in {time.perf_counter() - t0:.1f} s")
    print(compiled.report.text, end="" if compiled.report.text.endswith("\n") else "\n")

    with torch.no_grad():
        want = net(x)
        got = compiled(x)
    cos = _cosine(got, want)
    bar = 0.999 if cuda else 0.9999
    ok = cos >= bar
    print(
        f"\n== output vs eager PyTorch (FP32): cosine {cos:.6f} (needs >= {bar}), max abs "
        f"error {(got.float() - want.float()).abs().max().item():.3e}  {'OK' if ok else 'MISMATCH'}"
    )

    if cuda:
        with torch.no_grad():
            rows = [("eager PyTorch (FP32)", median_latency_ms(lambda: net(x)))]
            half = torchvision.models.get_model(model, weights=None).eval().to(device).half()
            half.load_state_dict(net.state_dict())
            xh = x.half()
            rows.append(("eager PyTorch (FP16)", median_latency_ms(lambda: half(xh))))
            if peer:
                opt = torch.compile(half, mode="reduce-overhead")
                rows.append(
                    ("torch.compile reduce-overhead (FP16)", median_latency_ms(lambda: opt(xh)))
                )
            kiln_ms = median_latency_ms(lambda: compiled(x))
        print("\n== speed (median ms, CUDA events, this run)")
        for name, ms in rows:
            print(f"  {name:38s} {ms:8.3f} ms   Kiln is {ms / kiln_ms:5.2f}x faster")
        print(f"  {'Kiln (' + precision + ')':38s} {kiln_ms:8.3f} ms")
    else:
        print(
            "\n== speed: no CUDA GPU visible; the engines ran on the CPU reference backend, "
            "which checks correctness, not speed (run the demo on a GPU for the speed table)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        inputs, expected = os.path.join(tmp, "x.pt"), os.path.join(tmp, "y.pt")
        torch.save(x.cpu(), inputs)
        torch.save(want.float().cpu(), expected)
        print("\n== saved and loaded in a fresh process")
        for fmt, name in (("exported_program", "model.pt2"), ("torchscript", "model.ts")):
            path = os.path.join(tmp, name)
            kiln.save(compiled, path, output_format=fmt)
            done = subprocess.run(
                [sys.executable, "-c", RELOAD, path, inputs, expected, device.type],
                capture_output=True,
                text=True,
            )
            reloaded = done.returncode == 0 and float(done.stdout.strip() or 0) >= bar
            ok &= reloaded
            detail = f"cosine {done.stdout.strip()}" if done.returncode == 0 else done.stderr[-400:]
            print(
                f"  {fmt:17s} {os.path.getsize(path) / 2**20:7.1f} MiB  {detail}  "
                f"{'OK' if reloaded else 'FAILED'}"
            )
    print("\nOK" if ok else "\nMISMATCH")
    return 0 if ok else 1
