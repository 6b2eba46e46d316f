"""The `kiln` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln inference compiler")
    parser.add_argument(
        "--log-level", choices=["error", "warning", "info", "verbose"], default=None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build and run a small network with the native API")
    demo.add_argument("--batch", type=int, default=32)
    sub.add_parser("info", help="print versions and visible GPUs")
    insp = sub.add_parser(
        "inspect", help="show a plan's optimized layers, memory plan and (--profile) layer times"
    )
    insp.add_argument("plan", help="a plan file (kiln.Plan.save)")
    insp.add_argument("--profile", action="store_true", help="time every layer (median of runs)")
    insp.add_argument(
        "--shapes",
        nargs="*",
        default=[],
        metavar="NAME=DIMS",
        help="input shapes for --profile, e.g. x=1x3x224x224 "
        "(default: static dims, profile 0's opt)",
    )
    insp.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    insp.add_argument("--backend", choices=["cuda", "reference"], default=None)
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    insp.add_argument("--no-arena", action="store_true", help="leave out the arena tensor list")
    args = parser.parse_args(argv)

    import kiln

    if args.log_level:
        kiln.set_log_level(args.log_level)
    try:
        if args.command == "demo":
            from kiln import demo as demo_mod

            return demo_mod.run(batch=args.batch)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "info":
            from kiln import _C

            print(f"kiln {kiln.__version__}")
            print(f"CUDA GPUs visible: {_C.cuda_device_count()}")
            if _C.cuda_device_count():
                print(f"GPU architecture: sm_{_C.cuda_device_arch()}")
            print(f"ops: {', '.join(_C.registered_ops())}")
            return 0
    except kiln.KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    return 1


def _inspect(args) -> int:
    import json

    import kiln
    from kiln.inspection import parse_shapes

    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    if shapes and not args.profile:
        print("kiln: error: --shapes is for --profile", file=sys.stderr)
        return 2
    info = kiln.inspect(args.plan)
    if args.profile:
        try:
            info.profile(shapes, runs=max(1, args.runs), backend=args.backend)
        except ValueError as e:
            print(f"kiln: error: {e}", file=sys.stderr)
            return 2
    print(json.dumps(info.to_dict(), indent=2) if args.json else info.text(not args.no_arena))
    return 0


if __name__ == "__main__":
    sys.exit(main())
