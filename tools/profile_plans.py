"""Per-layer GPU time of saved plans, summed by op and kernel, with the slowest layers.

    python3 tools/profile_plans.py PLAN [PLAN ...] [--top N]

Prints, per plan, the profiled total (the sum of per-layer times, without launch gaps), the time
per (op, kernel) and the N slowest layers. Uses kiln.inspect(...).profile().
"""

import argparse
import collections

import kiln


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plans", nargs="+")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    for path in args.plans:
        info = kiln.inspect(path).profile(runs=args.runs)
        print(f"== {path}: {len(info.layers)} layers, profiled total {info.total_ms:.3f} ms")
        by_kind = collections.Counter()
        count = collections.Counter()
        for la in info.layers:
            by_kind[(la.op, la.kernel)] += la.time_ms or 0.0
            count[(la.op, la.kernel)] += 1
        for (op, kernel), ms in by_kind.most_common():
            print(f"  {ms:8.3f} ms  {count[(op, kernel)]:4d} x  {op:18s} {kernel}")
        print("  slowest layers:")
        for la in sorted(info.layers, key=lambda la: -(la.time_ms or 0.0))[: args.top]:
            shapes = " ".join("x".join(map(str, o[2])) for o in la.outputs)
            print(
                f"  {la.time_ms:8.3f} ms  {la.name:40.40s} {la.op:16s} {la.kernel:28.28s} {shapes}"
            )


if __name__ == "__main__":
    main()
