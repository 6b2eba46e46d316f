"""INT8 calibration time (issue 16: resnet50 calibrated on 512 images in <= 30 s, on the H200).

For each algorithm, kiln.compile with INT8 and FP16 enabled and a kiln.Calibrator over the images
(random, in batches), timed as a whole; then the same compile again with the calibration cache
the first one wrote, which skips calibration. The difference is the calibration's own time.

    python3 bench/calibration.py                                  # resnet50, 512 images, GPU
    python3 bench/calibration.py --device cpu --model resnet18 --images 8 --batch 4   # a CPU check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))

import kiln  # noqa: E402
from kiln.runner import gpu_turn  # noqa: E402

TARGET_S = 30.0


def timed_compile(model, example, batches, algorithm: str, cache: Path) -> float:
    """Seconds of one INT8 compile, timed with the GPU to itself: inside a turn (gpu_turn) when
    KILN_GPU_LOCK names the lock of a benchmark running beside it."""
    with gpu_turn():
        start = time.perf_counter()
        kiln.compile(
            model,
            [example],
            enabled_precisions={torch.int8, torch.float16},
            calibrator=kiln.Calibrator(batches, algorithm=algorithm, cache_file=cache),
            cache_dir=False,
        )
        if example.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a torchvision model name")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--algorithms", default="minmax,entropy,percentile")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    import torchvision

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval().to(device, dtype)
    count = max(1, args.images // args.batch)
    batches = [
        (torch.randn(args.batch, 3, 224, 224, device=device, dtype=dtype),) for _ in range(count)
    ]
    example = batches[0][0]
    print(f"{args.model}: {count * args.batch} images in {count} batches of {args.batch}, {device}")
    print(
        "| algorithm | compile with calibration s | compile from the cache s | calibration s "
        "| target |"
    )
    print("|---|---:|---:|---:|---|")
    # One untimed compile first: the first compile of a process pays for imports and setup.
    kiln.compile(model, [example], enabled_precisions={torch.float16}, cache_dir=False)
    with tempfile.TemporaryDirectory() as folder:
        for algorithm in [a for a in args.algorithms.split(",") if a]:
            cache = Path(folder) / f"{algorithm}.calib"
            total = timed_compile(model, example, batches, algorithm, cache)
            build = timed_compile(model, example, batches, algorithm, cache)
            calibration = total - build
            verdict = "met" if calibration <= TARGET_S else "missed"
            print(
                f"| {algorithm} | {total:.2f} | {build:.2f} | {calibration:.2f} "
                f"| <= {TARGET_S:.0f} s: {verdict} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
