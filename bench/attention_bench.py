"""Times Kiln's attention layer on CUDA against torch's scaled_dot_product_attention.

For each shape (BERT-base and ViT-B/16 layers by default) it builds a one-layer Kiln network
(float16 unless --dtype says otherwise) and reports, in microseconds per call:
  * kiln: ExecutionContext.enqueue, 100 back-to-back calls timed with CUDA events (a CUDA graph
    replay per call: launch overhead included where the kernel is shorter than it);
  * kiln layer: the layer's own time from the context's profiling mode (median of 100);
  * torch: F.scaled_dot_product_attention on the same tensors, timed like kiln;
and the attention TFLOPS of the layer time (4 * B * Hq * Sq * Sk * D flops, halved when causal).

Run on a GPU machine: PYTHONPATH=py python3 bench/attention_bench.py [--dtype bfloat16] [--runs N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import kiln

# (name, B, Hq, Hkv, Sq, Sk, D, causal, mask): mask None, "padding" (bool [B, 1, 1, Sk]) or
# "additive" (q's dtype, [B, 1, 1, Sk], as Hugging Face BERT passes it).
SHAPES = [
    ("bert-base b32 s128", 32, 12, 12, 128, 128, 64, False, None),
    ("bert-base b32 s128 padding", 32, 12, 12, 128, 128, 64, False, "padding"),
    ("bert-base b32 s128 additive", 32, 12, 12, 128, 128, 64, False, "additive"),
    ("vit-b/16 b32 s197", 32, 12, 12, 197, 197, 64, False, None),
    ("vit-b/16 b1 s197", 1, 12, 12, 197, 197, 64, False, None),
    ("gpt2 b8 s512 causal", 8, 12, 12, 512, 512, 64, True, None),
    ("llama b4 s1024 d128 causal gqa", 4, 32, 8, 1024, 1024, 128, True, None),
    ("llama decode b16 s1 k1024 d128 gqa", 16, 32, 8, 1, 1024, 128, False, None),
]


def make_tensors(b, hq, hkv, sq, sk, d, mask, dtype):
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
    tensors = [q, k, v]
    if mask is not None:
        keep = torch.ones(b, 1, 1, sk, device="cuda", dtype=torch.bool)
        keep[: b // 2, ..., sk * 3 // 4 :] = False  # half the batch padded to 3/4 of the keys
        if mask == "padding":
            tensors.append(keep)
        else:
            zero = torch.zeros((), device="cuda", dtype=dtype)
            tensors.append(torch.where(keep, zero, torch.finfo(dtype).min))
    return tensors


def kiln_context(tensors, causal):
    net = kiln.Network()
    names = ["q", "k", "v", "mask"][: len(tensors)]
    ins = [net.add_input(n, t.dtype, list(t.shape)) for n, t in zip(names, tensors, strict=True)]
    net.mark_output(net.add_attention(*ins, causal=causal, name="attn"), "out")
    engine = kiln.Engine(
        kiln.Builder().build(net, kiln.BuilderConfig(device="cuda")), device="cuda"
    )
    ctx = engine.create_execution_context()
    q, v = tensors[0], tensors[2]
    out = torch.empty(*q.shape[:-1], v.shape[-1], device="cuda", dtype=q.dtype)
    for n, t in zip(names, tensors, strict=True):
        ctx.set_tensor_address(n, t.data_ptr())
    ctx.set_tensor_address("out", out.data_ptr())
    return ctx, out


def events_us(fn, runs: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1e3 / runs


def layer_us(ctx, stream: int, runs: int) -> float:
    ctx.set_profiling(True)
    times = []
    for _ in range(runs):
        ctx.enqueue(stream)
        times.append(ctx.layer_times()[0] * 1e3)
    ctx.set_profiling(False)
    return statistics.median(times)


def torch_sdpa(tensors, causal):
    q, k, v = tensors[:3]
    mask = tensors[3] if len(tensors) == 4 else None
    gqa = q.shape[1] != k.shape[1]
    return lambda: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    stream = torch.cuda.current_stream().cuda_stream
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, {args.runs} runs")
    columns = ("kiln us", "layer us", "torch us")
    header = (
        f"{'shape':38s} "
        + " ".join(f"{c:>9s}" for c in columns)
        + f" {'TFLOPS':>7s} {'max err':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, b, hq, hkv, sq, sk, d, causal, mask in SHAPES:
        tensors = make_tensors(b, hq, hkv, sq, sk, d, mask, dtype)
        ctx, out = kiln_context(tensors, causal)
        kiln_us = events_us(lambda ctx=ctx: ctx.enqueue(stream), args.runs)
        layer = layer_us(ctx, stream, args.runs)
        sdpa = torch_sdpa(tensors, causal)
        torch_us = events_us(sdpa, args.runs)
        ctx.enqueue(stream)
        torch.cuda.synchronize()
        err = (out.float() - sdpa().float()).abs().max().item()
        flops = 4 * b * hq * sq * sk * d / (2 if causal else 1)
        tflops = flops / (layer * 1e-6) / 1e12
        print(f"{name:38s} {kiln_us:9.1f} {layer:9.1f} {torch_us:9.1f} {tflops:7.1f} {err:8.1e}")


if __name__ == "__main__":
    main()
