"""Model acceptance check (issue 4): every zoo model through kiln.compile, save/load and C++.

    python3 tools/model_check.py                      # all 8 models, FP32 and FP16, on CUDA
    python3 tools/model_check.py --models resnet50 --precisions fp16
    python3 tools/model_check.py --quick              # resnet50 and bert, FP16 only
    python3 tools/model_check.py --zoo torchvision    # models nobody tuned for (tools/zoo_check.py)
    python3 tools/model_check.py --zoo torchvision --shard 1/3 --out OUT   # a third of it, then
    python3 tools/model_check.py --merge OUT*/zoo_torchvision_shard*.json  # one table of the thirds

Per model (bench/models.py) and precision, batch 1:
  1. kiln.compile on the device (FP16: model.half() and enabled_precisions={torch.float16}):
     engines and fallbacks (the acceptance wants 1 engine and 0 fallbacks);
  2. the output against FP32 eager PyTorch (TF32 off; the truth for FP16 rows too): cosine
     similarity >= 0.9999 (FP32) / >= 0.999 (FP16), and the max abs error (reported);
  3. kiln.save as "torchscript" and as "exported_program", kiln.load, and the loaded modules'
     outputs identical (torch.equal) to the compiled module's;
  4. the saved TorchScript file run by the C++ app of examples/cpp (kiln_infer, built against
     this checkout in build/examples_cpp as tests/python/test_cpp_deploy.py does), its output
     identical to Python's.
A markdown table is printed last; the exit status is non-zero when any row fails. Rows that would
start after --deadline seconds are reported as skipped (not failed).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))
import models as zoo  # noqa: E402 (bench/models.py)
from models import compare, first_tensor  # noqa: E402

COSINE_MIN = {"fp32": 0.9999, "fp16": 0.999}
FORMATS = ("torchscript", "exported_program")


@dataclass
class Result:
    model: str
    precision: str
    engines: int | None = None
    fallbacks: int | None = None
    fallback_ops: list[str] = field(default_factory=list)
    cosine: float | None = None
    max_abs_err: float | None = None
    save_load: str = "-"  # "yes", "no (...)" or "-" (not reached)
    cpp: str = "-"  # "yes", "no (...)", "skipped" or "-"
    status: str = "FAIL"  # PASS, FAIL or SKIP
    error: str = ""
    seconds: float = 0.0

    def decide(self) -> None:
        ok = self.engines == 1 and self.fallbacks == 0 and not self.error
        ok = ok and self.cosine is not None and self.cosine >= COSINE_MIN[self.precision]
        ok = ok and self.save_load == "yes" and self.cpp in ("yes", "skipped")
        self.status = "PASS" if ok else "FAIL"


def truncate(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---- the C++ app ----------------------------------------------------------------------------


def build_cpp_app() -> Path:
    """examples/cpp's kiln_infer built against this checkout (tools/cpp_example.py). Raises
    RuntimeError with the build's tail on failure."""
    from cpp_example import build_example

    return build_example("cpp") / "kiln_infer"


def run_cpp(exe: Path, model: Path, inputs: tuple, device: torch.device, workdir: Path):
    """kiln_infer's output for `inputs` (saved with torch.save), as a CPU tensor or tuple."""
    torch.save(tuple(t.cpu() for t in inputs), workdir / "input.pt")
    out = workdir / "cpp_output.pt"
    cmd = [str(exe), str(model), str(workdir / "input.pt"), str(out), device.type]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"kiln_infer exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return torch.load(out)


def _equal(a, b) -> bool:
    a, b = first_tensor(a), first_tensor(b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


# ---- one row --------------------------------------------------------------------------------


def check(
    entry,
    precision: str,
    device: torch.device,
    workdir: Path,
    cpp_exe: Path | None,
    batch: int = 1,
    verbose: bool = False,
) -> Result:
    """Runs the four checks for one model and precision; never raises. Eager PyTorch (the
    truth, and any part of the compiled module that runs in PyTorch) computes FP32 strictly
    (TF32 off), like Kiln's FP32."""
    with zoo.torch_tf32(False):
        return _check(entry, precision, device, workdir, cpp_exe, batch, verbose)


def _check(entry, precision, device, workdir, cpp_exe, batch, verbose) -> Result:
    import kiln
    from kiln.dtypes import precision_dtype, torch_dtype

    r = Result(entry.name, precision)
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        model = entry.build().eval()
        x32 = entry.inputs(batch, torch.device("cpu"))
        model.to(device)
        with torch.no_grad():
            truth = first_tensor(model(*(t.to(device) for t in x32))).float().cpu()
        cast = torch_dtype(precision_dtype(precision))  # fp16: model.half(), float16 inputs
        if cast != torch.float32:
            model = model.to(cast)
        x = tuple(t.to(device, cast) if t.is_floating_point() else t.to(device) for t in x32)

        compiled = kiln.compile(model, list(x), enabled_precisions={precision}, device=device.type)
        r.engines = compiled.report.num_engines
        r.fallbacks = len(compiled.report.fallbacks)
        r.fallback_ops = sorted({f.target for f in compiled.report.fallbacks})
        model.cpu()
        with torch.no_grad():
            out = compiled(*x)
        r.max_abs_err, r.cosine = compare(first_tensor(out), truth)

        problems = []
        for fmt in FORMATS:
            path = workdir / f"{entry.name}_{precision}.{'ts' if fmt == 'torchscript' else 'pt2'}"
            try:
                kiln.save(compiled, path, output_format=fmt)
                loaded = kiln.load(path)
                with torch.no_grad():
                    again = loaded(*x)
                if not _equal(again, out):
                    problems.append(f"{fmt}: outputs differ")
            except Exception as e:  # noqa: BLE001 (reported in the row)
                problems.append(f"{fmt}: {truncate(f'{type(e).__name__}: {e}', 120)}")
        r.save_load = "yes" if not problems else "no (" + "; ".join(problems) + ")"

        if cpp_exe is None:
            r.cpp = "skipped"
        else:
            ts = workdir / f"{entry.name}_{precision}.ts"
            try:
                cpp_out = run_cpp(cpp_exe, ts, x, device, workdir)
                with torch.no_grad():
                    python_out = kiln.load(ts)(*x)
                r.cpp = "yes" if _equal(cpp_out, python_out) else "no (outputs differ)"
            except Exception as e:  # noqa: BLE001
                r.cpp = f"no ({truncate(f'{type(e).__name__}: {e}', 120)})"
    except Exception as e:  # noqa: BLE001
        if verbose:
            traceback.print_exc()
        r.error = truncate(f"{type(e).__name__}: {e}")
    r.decide()
    r.seconds = time.perf_counter() - t0
    return r


# ---- output ---------------------------------------------------------------------------------


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(results: Sequence[Result]) -> str:
    lines = [
        "| model | precision | engines | fallbacks | cosine | max abs err | save/load identical "
        "| C++ identical | result | notes |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in results:
        notes = []
        if r.fallback_ops:
            notes.append("fallback ops: " + ", ".join(r.fallback_ops[:6]))
        if r.error:
            notes.append(r.error)
        if r.cosine is not None and r.cosine < COSINE_MIN[r.precision]:
            notes.append(f"cosine < {COSINE_MIN[r.precision]}")
        notes.append(f"{r.seconds:.0f} s")
        cells = [
            r.model,
            r.precision,
            _fmt(r.engines, "d"),
            _fmt(r.fallbacks, "d"),
            _fmt(r.cosine, ".6f"),
            _fmt(r.max_abs_err, ".2e"),
            r.save_load,
            r.cpp,
            r.status,
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(zoo.MODELS), help="comma list (bench/models.py)")
    p.add_argument("--precisions", default="fp32,fp16", help="fp32,fp16")
    p.add_argument("--quick", action="store_true", help="resnet50 and bert, FP16")
    p.add_argument("--device", default="cuda", help="cuda, or cpu (the reference backend)")
    p.add_argument("--no-cpp", action="store_true", help="skip the C++ app check")
    p.add_argument("--deadline", type=float, default=0.0, help="seconds; later rows are skipped")
    p.add_argument("--out", help="also write model_check.md and model_check.json here")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")
    p.add_argument(
        "--zoo",
        choices=["torchvision", "hf-decoders", "detection"],
        help="the zoo check of models nobody tuned for (tools/zoo_check.py): --models picks some "
        "by name (default all), --no-peer skips torch.compile",
    )
    p.add_argument("--no-peer", action="store_true", help="--zoo: skip reduce-overhead timing")
    p.add_argument("--profile", action="store_true", help="--zoo: per-op GPU time of each engine")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="--zoo: run the rows this many at a time, each in a worker process: the FP32 rows "
        "(accuracy and structure only, untimed), then the FP16 rows, timed, taking turns on the "
        "GPU for Kiln's build and the latency runs (tools/zoo_check.py says how)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="--zoo on a machine of several GPUs: every row in a worker process with one GPU to "
        "itself, timed with its peer, this many at a time",
    )
    p.add_argument(
        "--shard",
        default="1/1",
        help="--zoo: K/N runs the K-th of N interleaved parts of the zoo (every N-th model from "
        "the K-th), for a zoo longer than one run; --out then writes zoo_<zoo>_shardKofN.{md,json}",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="print one table (and the FP16 median speedup) of the zoo JSON files of several "
        "--shard runs, and exit (non-zero when a row failed)",
    )
    args = p.parse_args(argv)
    if args.merge:
        import zoo_check

        table = zoo_check.merge(args.merge)
        print(table)
        return 1 if "| FAIL |" in table else 0
    if args.zoo:
        import zoo_check

        try:
            shard = zoo_check.parse_shard(args.shard)
        except ValueError as e:
            print(f"model_check: {e}", file=sys.stderr)
            return 2

        models = "" if args.models == ",".join(zoo.MODELS) else args.models
        return zoo_check.run(
            args.zoo,
            models,
            [x for x in args.precisions.split(",") if x],
            torch.device(args.device),
            args.deadline,
            not args.no_peer,
            args.verbose,
            args.out,
            args.profile,
            args.jobs,
            args.gpus,
            shard,
        )
    if args.quick:
        args.models, args.precisions = "resnet50,bert", "fp16"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("model_check: no CUDA GPU visible (use --device cpu)", file=sys.stderr)
        return 2
    try:
        entries, precisions = zoo.parse_matrix(args.models, args.precisions)
    except ValueError as e:
        print(f"model_check: {e}", file=sys.stderr)
        return 2
    if set(precisions) - set(COSINE_MIN):
        print("model_check: --precisions takes fp32,fp16", file=sys.stderr)
        return 2

    import kiln  # noqa: F401 (registers the runtime before any load)

    start = time.perf_counter()
    cpp_exe, cpp_error = None, ""
    if not args.no_cpp:
        try:
            cpp_exe = build_cpp_app()
        except Exception as e:  # noqa: BLE001 (every row reports it)
            cpp_error = truncate(str(e), 300)
            print(f"model_check: the C++ app did not build: {cpp_error}", file=sys.stderr)

    results = []
    with tempfile.TemporaryDirectory(prefix="kiln_model_check_") as tmp:
        for entry in entries:
            for precision in precisions:
                if args.deadline and time.perf_counter() - start > args.deadline:
                    results.append(
                        Result(entry.name, precision, status="SKIP", error="time budget")
                    )
                    continue
                print(f"[{time.perf_counter() - start:6.1f}s] {entry.name} {precision}", flush=True)
                r = check(
                    entry,
                    precision,
                    device,
                    Path(tmp) / f"{entry.name}_{precision}",
                    cpp_exe,
                    verbose=args.verbose,
                )
                gc.collect()  # the row's modules and engines go before the next row
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if cpp_error and r.cpp == "skipped":
                    r.cpp = "no (the C++ app did not build)"
                    r.decide()
                results.append(r)
                print(
                    f"    {r.status}: engines {r.engines}, fallbacks {r.fallbacks}, "
                    f"cosine {_fmt(r.cosine, '.6f')}, save/load {r.save_load}, C++ {r.cpp}"
                    + (f", error {r.error}" if r.error else ""),
                    flush=True,
                )

    table = markdown(results)
    failed = [r for r in results if r.status == "FAIL"]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_check.md").write_text(table + "\n")
        import json

        (out / "model_check.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print()
    print(
        f"model_check: {len(results) - len(failed)}/{len(results)} rows pass or were skipped "
        f"({time.perf_counter() - start:.0f} s)"
    )
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
