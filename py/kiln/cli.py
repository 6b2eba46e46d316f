"""The `kiln` command line."""

from __future__ import annotations

import argparse
import sys

from kiln.dtypes import DEVICES, NAMES, device_name, device_of_backend, dtype_name, precision_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln inference compiler")
    parser.add_argument(
        "--log-level", choices=["error", "warning", "info", "verbose"], default=None
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="LIBRARY",
        help="load a plugin library first (repeatable; docs/plugins.md); "
        "KILN_PLUGIN_LIBRARIES=a.so:b.so does the same",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="compile a torchvision model, check it, time it (GPU), save and reload it"
    )
    demo.add_argument("--model", default="resnet18", help="a torchvision model name")
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--size", type=int, default=224, help="image height and width")
    demo.add_argument("--no-peer", action="store_true", help="skip torch.compile in the table")
    sub.add_parser("info", help="print versions and visible GPUs")
    insp = sub.add_parser(
        "inspect", help="show a plan's optimized layers, memory plan and (--profile) layer times"
    )
    insp.add_argument(
        "plan",
        help="a plan file (kiln.Plan.save), or a saved compiled module (kiln.save): each engine",
    )
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
    insp.add_argument(
        "--device",
        choices=list(DEVICES),
        default=None,
        help="where --profile runs (default: cuda for a GPU plan when one is visible, else cpu)",
    )
    # Deprecated (one release): --backend cuda|reference, the old name of --device.
    insp.add_argument("--backend", choices=["cuda", "reference"], help=argparse.SUPPRESS)
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    insp.add_argument("--no-arena", action="store_true", help="leave out the arena tensor list")
    _add_compile_parser(sub)
    onnx = sub.add_parser("onnx", help="parse an ONNX model and build a plan (docs/onnx.md)")
    onnx.add_argument("model", help="an .onnx file (external data beside it)")
    onnx.add_argument("-o", "--output", required=True, help="the plan file to write")
    onnx.add_argument("--device", choices=list(DEVICES), default="auto", help="where the plan runs")
    onnx.add_argument(
        "--precisions", nargs="*", default=[], help="besides fp32: tf32, fp16, bf16 (default none)"
    )
    onnx.add_argument(
        "--shapes",
        nargs="*",
        default=[],
        metavar="NAME:MIN:OPT:MAX",
        help="a range per input with dynamic dims, dims as 1x3x224x224, "
        "e.g. input_ids:1x16:8x128:32x512",
    )
    _add_run_parsers(sub)
    args = parser.parse_args(argv)
    args.argv = argv

    import kiln

    if args.log_level:
        kiln.set_log_level(args.log_level)
    try:
        for library in args.plugin:
            kiln.load_plugin_library(library)
        if args.command == "demo":
            from kiln import demo as demo_mod

            return demo_mod.run(args.model, batch=args.batch, size=args.size, peer=not args.no_peer)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "info":
            print(info_text())
            return 0
        if args.command == "compile":
            return _compile(args)
        if args.command == "onnx":
            return _onnx(args)
        if args.command == "run":
            from kiln.runner import main_run

            return main_run(args)
        if args.command == "compare":
            from kiln.compare import main_compare

            return main_compare(args)
    except kiln.KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    return 1


def _version(v: int, cuda: bool = False) -> str:
    """12040 -> 12.4 (CUDA's encoding), 91900 -> 9.19.0 (cuDNN 9's)."""
    if not v:
        return "none"
    if cuda:
        return f"{v // 1000}.{v % 1000 // 10}"
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"


def info_text() -> str:
    """`kiln info`: Kiln, torch, CUDA (built against / driver), cuBLASLt, cuDNN (built against /
    loaded), the GPUs, whether the torch runtime library loads, the ONNX parser, the ops."""
    import platform

    import kiln
    from kiln import _C

    v = _C.versions()
    lines = [f"kiln {kiln.__version__} (python {platform.python_version()})"]
    try:
        import torch

        lines.append(
            f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'})"
        )
    except ImportError:
        lines.append("torch: not installed (the engine API works without it)")
    lines.append(
        f"CUDA runtime built against {_version(v['cuda_runtime_built'], cuda=True)}; driver "
        f"supports CUDA {_version(v['cuda_driver'], cuda=True)}"
    )
    lines.append(f"cuBLASLt built against {v['cublaslt_built']}")
    lines.append(
        f"cuDNN built against {_version(v['cudnn_built'])}, loaded {_version(v['cudnn_loaded'])}"
    )
    n = _C.cuda_device_count()
    lines.append(f"GPUs visible: {n}")
    for d in range(n):
        lines.append(f"  cuda:{d} {_C.cuda_device_name(d)} (sm_{_C.cuda_device_arch(d)})")
    from kiln import runtime

    if not runtime.is_available():
        lines.append("runtime library (libkiln_runtime.so): not built (no torch at build time)")
    else:
        try:
            runtime.load_library()
            lines.append(f"runtime library: loads ({runtime.LIBRARY_PATH})")
        except Exception as e:  # noqa: BLE001 (report any reason it does not load)
            lines.append(f"runtime library: does not load: {e}")
    lines.append(f"ONNX parser: {'built' if hasattr(_C, 'onnx_parse_file') else 'not built'}")
    lines.append(f"ops ({len(_C.registered_ops())}): {', '.join(_C.registered_ops())}")
    lines.append(f"plugins: {', '.join(_C.registered_plugins()) or 'none loaded'}")
    return "\n".join(lines)


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
    device = args.device
    if args.backend is not None:
        print("kiln: warning: --backend is deprecated; use --device cuda|cpu", file=sys.stderr)
        if device is None:
            device = device_of_backend(args.backend)
    infos = [kiln.inspect(plan) for plan in _plans(args.plan)]
    for info in infos:
        if args.profile:
            try:
                info.profile(shapes, runs=max(1, args.runs), device=device)
            except ValueError as e:
                print(f"kiln: error: {e}", file=sys.stderr)
                return 2
    if args.json:
        data = [info.to_dict() for info in infos]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return 0
    peaks = None
    if args.profile and infos and infos[0].profile_device == "cuda":
        from kiln.roofline import measure_peaks

        peaks = measure_peaks("cuda")  # about a second: the roofline of every layer
    for k, info in enumerate(infos):
        if len(infos) > 1:
            print(f"== engine {k} of {len(infos)}")
        print(info.text(not args.no_arena, peaks=peaks))
    return 0


def _onnx(args) -> int:
    """kiln onnx MODEL -o PLAN: kiln.onnx.parse, one optimization profile from --shapes, build."""
    import kiln
    import kiln.onnx

    ranges = {}
    for spec in args.shapes:
        parts = spec.rsplit(":", 3)
        try:
            if len(parts) != 4:
                raise ValueError
            name, dims = parts[0], [[int(d) for d in p.split("x")] for p in parts[1:]]
        except ValueError:
            print(
                f"kiln: error: --shapes {spec!r}: write NAME:MIN:OPT:MAX, dims as 1x3x224x224",
                file=sys.stderr,
            )
            return 2
        ranges[name] = tuple(dims)
    net = kiln.onnx.parse(args.model)
    dynamic = [t.name for t in net.inputs if -1 in t.shape and t.name not in ranges]
    if dynamic:
        print(
            f"kiln: error: inputs {dynamic} have dynamic dims: give each a --shapes range",
            file=sys.stderr,
        )
        return 2
    config = kiln.BuilderConfig(device=args.device, precisions=args.precisions)
    if ranges:
        config.add_optimization_profile(ranges)
    plan = kiln.Builder().build(net, config)
    plan.save(args.output)
    info = net.onnx_info
    print(f"{args.model}: opset {info['opset']}, {len(plan.layers())} layers -> {args.output}")
    return 0


def _add_model_arguments(p, build: bool = True) -> None:
    """What `kiln run` and `kiln compare` share: the model, its shapes, precisions, device."""
    p.add_argument(
        "model",
        help="an ONNX file, a Kiln plan, a module saved with Kiln engines (kiln.save), or a "
        "TorchScript / ExportedProgram file (compiled first)",
    )
    p.add_argument(
        "--shapes",
        nargs="*",
        default=[],
        metavar="NAME:DIMS|NAME:MIN:OPT:MAX",
        help="input shapes, dims as 1x3x224x224; runs use OPT (e.g. ids:1x16:8x128:32x512)",
    )
    p.add_argument("--batch", type=int, default=None, help="the size of a dynamic first dim")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="where Kiln runs")
    p.add_argument("--fp16", action="store_true", help="allow FP16")
    p.add_argument("--bf16", action="store_true", help="allow BF16")
    p.add_argument("--tf32", action="store_true", help="allow TF32")
    if build:
        p.add_argument(
            "--int8", action="store_true", help="allow INT8 (with --calib, or Q/DQ models)"
        )
        p.add_argument("--fp8", action="store_true", help="allow FP8 e4m3 (with --calib)")
        p.add_argument(
            "--calib", default=None, metavar="DIR", help="calibration batches (.npz files)"
        )
        p.add_argument("--timing-cache", default=None, metavar="FILE", help="a tactic timing cache")
        p.add_argument("--save-plan", default=None, metavar="FILE", help="write the built plan")
    p.add_argument(
        "--pin-fp32",
        action="append",
        default=[],
        metavar="LAYER,...",
        help="layers kept in float32 (kiln compare --per-layer suggests them)",
    )
    p.add_argument("--inputs", default=None, metavar="FILE.npz", help="inputs (else random)")


def _add_run_parsers(sub) -> None:
    run = sub.add_parser("run", help="build or load a model and time it (kiln/runner.py)")
    _add_model_arguments(run)
    run.add_argument("--warmup", type=int, default=10)
    run.add_argument("--iterations", type=int, default=100)
    run.add_argument("--duration", type=float, default=None, metavar="S", help="time for S seconds")
    run.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction, default=True, help="(default on)"
    )
    run.add_argument("--streams", type=int, default=1, help="contexts run together (throughput)")
    run.add_argument("--outputs", default=None, metavar="FILE.npz", help="write the outputs")
    run.add_argument("--profile", action="store_true", help="per-layer times")
    run.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    cmp = sub.add_parser(
        "compare", help="compare Kiln's outputs with another runtime (kiln/compare.py)"
    )
    _add_model_arguments(cmp, build=False)
    cmp.add_argument(
        "--against", choices=["onnxruntime", "torch", "reference"], default="reference"
    )
    cmp.add_argument("--rtol", type=float, default=None, help="default: by precision")
    cmp.add_argument("--atol", type=float, default=None, help="default: by precision")
    cmp.add_argument(
        "--per-layer",
        action="store_true",
        help="compare every layer (ONNX models): the first beyond tolerance, FP16 overflows",
    )


def _plans(path: str) -> list:
    """The plans to inspect: the plan file itself, or every engine's plan of a module saved with
    kiln.save / torch.jit.save / torch.export.save (a torch archive: a zip file)."""
    import zipfile

    import kiln

    if not zipfile.is_zipfile(path):
        return [path]
    plans = kiln.plans(kiln.load(path))
    if not plans:
        raise kiln.KilnError(f"{path} is a saved module with no Kiln engine in it")
    return plans


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
        help=f"dtype per input in order ({', '.join(NAMES)}; default float32)",
    )
    p.add_argument(
        "--precision",
        action="append",
        default=[],
        help="precision the engines may use, repeatable: fp32, fp16, bf16, tf32 (also float32, "
        "float16, half, bfloat16)",
    )
    p.add_argument("--min-block-size", type=int, default=5)
    p.add_argument("--torch-executed-op", action="append", default=[], metavar="OP")
    p.add_argument("--require-full-compilation", action="store_true")
    p.add_argument(
        "--torch-op-in-engine",
        action="append",
        default=None,
        metavar="OP",
        help="an op run through PyTorch inside its engine (repeatable; 'auto', the default: every "
        "graph-safe op without a converter where a graph break would split an engine; 'none': "
        "no such ops)",
    )
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

    import torch

    import kiln
    from kiln import _C
    from kiln.dtypes import torch_dtype
    from kiln.inputs import Input

    if not os.path.isfile(args.input_module):
        print(f"kiln compile: error: {args.input_module} does not exist", file=sys.stderr)
        return 2
    # Inputs in command-line order: --input and --input-range may be mixed.
    order = _input_order(sys.argv if args.argv is None else args.argv)
    shapes, ranges = list(args.input), list(args.input_range)
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
        dtypes = [dtype_name(d) for d in args.dtype] or ["float32"] * len(specs)
        inputs = [
            Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch_dtype(dtype))
            for (lo, opt, hi), dtype in zip(specs, dtypes, strict=True)
        ]
        precisions = [precision_name(p) for p in args.precision]
        device = device_name(args.device or ("cuda" if _C.cuda_device_count() > 0 else "cpu"))
    except (ValueError, TypeError) as e:
        print(f"kiln compile: error: {e}", file=sys.stderr)
        return 2
    try:
        module = torch.jit.load(args.input_module, map_location="cpu")
    except Exception as error:  # noqa: BLE001 (torch raises several kinds for a bad file)
        raise kiln.KilnError(
            f"cannot load TorchScript module {args.input_module}: {error}".split("\n")[0]
        ) from None
    # The same kiln.compile (and so the same options and driver) as the Python API.
    result = kiln.compile(
        module,
        inputs,
        ir="torchscript",
        enabled_precisions=precisions or ["fp32"],
        min_block_size=args.min_block_size,
        torch_executed_ops=args.torch_executed_op,
        torch_ops_in_engine=[op for op in args.torch_op_in_engine or ["auto"] if op != "none"],
        require_full_compilation=args.require_full_compilation,
        device=device,
        workspace_size=args.workspace_size,
        dry_run=args.dry_run,
    )
    report = result if args.dry_run else result.report
    if not args.dry_run:
        kiln.save(result, args.output_module, output_format="torchscript")
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
