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
    args = parser.parse_args(argv)

    import kiln

    if args.log_level:
        kiln.set_log_level(args.log_level)
    try:
        if args.command == "demo":
            from kiln import demo as demo_mod

            return demo_mod.run(batch=args.batch)
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


if __name__ == "__main__":
    sys.exit(main())
