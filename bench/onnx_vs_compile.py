"""The same model through both ways into an engine, on the GPU: exported to ONNX and parsed
(kiln.onnx.parse), and through kiln.compile. Both engines are timed the same way (an execution
context on torch CUDA tensors, CUDA events, median), with their outputs against ONNX Runtime.

    python3 bench/onnx_vs_compile.py        # resnet50, BERT-base (seq 128); batch 1 and 32; FP16
    python3 bench/onnx_vs_compile.py --models resnet50 --batches 1

The issue's bar (docs/onnx.md): the parsed model runs within 10% of kiln.compile's engine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
sys.path.insert(0, str(ROOT / "bench"))
from run import time_runs  # noqa: E402

import kiln  # noqa: E402
import kiln.onnx  # noqa: E402


class Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import transformers

        self.bert = transformers.BertModel(transformers.BertConfig()).eval()

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


def model_and_input(name: str, batch: int):
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50().eval(), torch.randn(batch, 3, 224, 224), "x"
    return Bert().eval(), torch.randint(0, 30000, (batch, 128)), "input_ids"


def context_timer(plan, name: str):
    ctx = kiln.Engine(plan, device="cuda").create_execution_context()

    def run(t):
        return ctx.execute({name: t})

    return run


def cosine(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def print_profiles(row: str, onnx_plan, compile_plan) -> None:
    """Both engines timed layer by layer (kiln.inspect(...).profile): their totals, and the GPU
    time per (op, kernel) side by side, largest difference first (input and output casts left
    out: the ONNX engine takes float32 where the compiled module takes float16)."""
    a = kiln.inspect(onnx_plan).profile(runs=20)
    b = kiln.inspect(compile_plan).profile(runs=20)

    def by_kernel(inspection):
        sums: dict[tuple[str, str], list[float]] = {}
        for la in inspection.layers:
            if la.op != "cast":
                entry = sums.setdefault((la.op, la.kernel), [0, 0.0])
                entry[0] += 1
                entry[1] += la.time_ms or 0.0
        return sums

    ka, kb = by_kernel(a), by_kernel(b)
    print(f"{row}: layer times summed: ONNX {a.total_ms:.3f} ms, kiln.compile {b.total_ms:.3f} ms")
    keys = sorted(
        set(ka) | set(kb), key=lambda k: -abs(ka.get(k, [0, 0.0])[1] - kb.get(k, [0, 0.0])[1])
    )
    for op, kernel in keys:
        na, ta = ka.get((op, kernel), [0, 0.0])
        nb, tb = kb.get((op, kernel), [0, 0.0])
        print(
            f"  {op[:20]:20} {kernel[:30]:30} "
            f"ONNX {na:4} x {ta:.4f} ms | compile {nb:4} x {tb:.4f} ms"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="resnet50,bert")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument(
        "--exporter",
        default="torchscript",
        choices=["torchscript", "dynamo"],
        help="torch.onnx.export's TorchScript exporter or its dynamo exporter (needs onnxscript)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also time both engines layer by layer and print where the ONNX engine loses",
    )
    args = ap.parse_args()
    import onnxruntime as ort

    device = torch.device("cuda")
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            model, x, input_name = model_and_input(name, batch)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.onnx"
                if args.exporter == "dynamo":
                    torch.onnx.export(model, (x,), path, dynamo=True, input_names=[input_name])
                else:
                    torch.onnx.export(
                        model, (x,), path, dynamo=False, opset_version=17, input_names=[input_name]
                    )
                ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
                    None, {input_name: x.numpy()}
                )[0]
                net = kiln.onnx.parse(path)
            config = kiln.BuilderConfig(device="cuda", precisions=["fp16"])
            onnx_plan = kiln.Builder().build(net, config)
            cin = x.to(device) if x.dtype != torch.float32 else x.half().to(device)
            compiled = kiln.compile(
                model.half().to(device), [cin], enabled_precisions={torch.float16}
            )
            engines = len(kiln.plans(compiled))
            xin = x.to(device)
            onnx_run = context_timer(onnx_plan, input_name)
            out = onnx_run(xin)
            got = next(iter(out.values())).float().cpu().numpy()
            t_onnx = statistics.median(time_runs(onnx_run, [(xin,)], args.runs, 20, device))
            t_mod = statistics.median(time_runs(compiled, [(cin,)], args.runs, 20, device))
            rows.append(
                (name, batch, len(onnx_plan.layers()), engines, t_onnx, t_mod, cosine(got, ref))
            )
            if args.profile:
                print_profiles(f"{name} b{batch}", onnx_plan, kiln.plans(compiled)[0])
            del compiled
            torch.cuda.empty_cache()
    columns = [
        "model",
        "batch",
        "ONNX engine layers",
        "kiln.compile engines",
        "ONNX engine ms",
        "kiln.compile module ms",
        "ONNX / compile",
        "cosine vs ONNX Runtime FP32",
    ]
    print(f"exporter: {args.exporter}")
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, layers, engines, t_onnx, t_mod, cos in rows:
        cells = [name, batch, layers, engines, f"{t_onnx:.3f}", f"{t_mod:.3f}"]
        cells += [f"{t_onnx / t_mod:.2f}", f"{cos:.6f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
