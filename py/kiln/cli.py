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
    _add_compile_parser(sub)
    args = parser.parse_args(argv)
    args.argv = argv

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
        if args.command == "compile":
            return _compile(args)
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


def _add_compile_parser(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="compile a TorchScript module (torch.jit.save file) into one running Kiln engines",
        description="Compiles a TorchScript module (scripted or traced, saved with torch.jit.save) "
        "with the C++ TorchScript frontend; the result loads with torch.jit.load after "
        "`import kiln`, or in a C++ app linking Kiln::runtime.",
    )
    p.add_argument("input_module", help="TorchScript file to compile")
    p.add_argument("output_module", help="where to write the compiled TorchScript module")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="SHAPE",
        help="static shape of the next forward input, e.g. 1x3x224x224 (repeat per input)",
    )
    p.add_argument(
        "--input-range",
        action="append",
        default=[],
        metavar="MIN:OPT:MAX",
        help="dynamic shape of the next forward input, e.g. 1x128:8x128:32x128",
    )
    p.add_argument(
        "--dtype",
        action="append",
        default=[],
        help="dtype per input in order (float32, float16, bfloat16, int32, int64, bool, int8; "
        "default float32)",
    )
    p.add_argument(
        "--precision",
        action="append",
        default=[],
        choices=["fp32", "fp16", "bf16", "tf32"],
        help="precision the engines may use (repeatable)",
    )
    p.add_argument("--min-block-size", type=int, default=5)
    p.add_argument("--torch-executed-op", action="append", default=[], metavar="OP")
    p.add_argument("--require-full-compilation", action="store_true")
    p.add_argument("--device", default=None, help="cuda (default with a GPU), cuda:N or cpu")
    p.add_argument("--workspace-size", type=int, default=None)
    p.add_argument("--dry-run", action="store_true", help="print the partition only")


def _shape(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split("x")] if text else []
    except ValueError:
        raise ValueError(f"shape {text!r} is not like 1x3x224x224") from None


def _compile(args) -> int:
    import os

    from kiln import _C, torchscript

    if not os.path.isfile(args.input_module):
        print(f"kiln compile: error: {args.input_module} does not exist", file=sys.stderr)
        return 2
    # Inputs in command-line order: --input and --input-range may be mixed.
    order = _input_order(sys.argv if args.argv is None else args.argv)
    shapes, ranges = list(args.input), list(args.input_range)
    lines = []
    try:
        specs = []
        for kind in order:
            if kind == "input":
                s = _shape(shapes.pop(0))
                specs.append((s, s, s))
            else:
                parts = ranges.pop(0).split(":")
                if len(parts) != 3:
                    raise ValueError(f"--input-range needs MIN:OPT:MAX, got {':'.join(parts)!r}")
                specs.append(tuple(_shape(p) for p in parts))
        if not specs:
            raise ValueError(
                "give one --input SHAPE or --input-range MIN:OPT:MAX per forward input"
            )
        if args.dtype and len(args.dtype) != len(specs):
            raise ValueError(
                f"{len(args.dtype)} --dtype for {len(specs)} inputs: give one per input"
            )
        dtypes = args.dtype or ["float32"] * len(specs)
        for (lo, opt, hi), dtype in zip(specs, dtypes, strict=True):
            dims = " ".join("x".join(map(str, s)) or "scalar" for s in (lo, opt, hi))
            lines.append(f"input {dtype} {dims}")
    except ValueError as e:
        print(f"kiln compile: error: {e}", file=sys.stderr)
        return 2
    for p in args.precision:
        lines.append(f"precision {p}")
    lines.append(f"min_block_size {args.min_block_size}")
    lines += [f"torch_executed_op {op}" for op in args.torch_executed_op]
    lines.append(f"require_full_compilation {int(args.require_full_compilation)}")
    device = args.device or ("cuda" if _C.cuda_device_count() > 0 else "cpu")
    lines.append(f"device {device}")
    if args.workspace_size is not None:
        lines.append(f"workspace_bytes {args.workspace_size}")
    lines.append(f"dry_run {int(args.dry_run)}")
    report = torchscript.compile_file(args.input_module, args.output_module, "\n".join(lines))
    print(report.text, end="")
    if not args.dry_run:
        print(f"wrote {args.output_module}")
    return 0


def _input_order(argv: list[str]) -> list[str]:
    order = []
    for a in argv:
        if a == "--input" or a.startswith("--input="):
            order.append("input")
        elif a == "--input-range" or a.startswith("--input-range="):
            order.append("range")
    return order


if __name__ == "__main__":
    sys.exit(main())
