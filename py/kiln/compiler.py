"""kiln.compile: a PyTorch module -> a module whose supported parts run in Kiln engines.

Two frontends, one driver. The export frontend, stage by stage:
  1. export (kiln/export.py): torch.export.export (dynamic dims from kiln.Input ranges) and
     run_decompositions, giving an aten-level FX graph;
  2. lower (kiln/fx_lowering.py): FX nodes -> KGraph (kiln._C), the torch-free graph the C++
     converters read;
  3. compile (C++, driver/compile.h): partition into engine and PyTorch segments, convert and
     build each engine segment into a plan, and report;
  4. assemble (kiln/assemble.py): a torch.fx.GraphModule calling the engines, the other nodes as
     they were.
The TorchScript frontend (kiln/torchscript.py) does 1, 2 and 4 in C++ (torchscript/) around the
same driver. Both take one kiln._C.CompileOptions (kiln/options.py), so every option means the
same on both.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln import _C, module_cache, plugins, torch_ops
from kiln.assemble import assemble
from kiln.dtypes import device_name
from kiln.export import SPECULATED, export_program
from kiln.fx_lowering import FxLowering
from kiln.inputs import Input
from kiln.log import log
from kiln.options import (
    automatic_torch_ops,
    compile_options,
    default_timing_cache_path,  # noqa: F401 (re-exported)
)
from kiln.progress import progress_bars, step
from kiln.refitting import refit_info
from kiln.report import (  # noqa: F401 (CompileReport, Fallback re-exported: kiln.compiler's API)
    CompileReport,
    Fallback,
    set_apart_checks,
)


class CompiledModule(torch.nn.Module):
    """The result of kiln.compile: engines and PyTorch code in one FX GraphModule.

    ``graph_module`` takes the flattened tensor inputs and returns the flattened outputs;
    forward restores the original output structure. ``report`` says how the graph was split.
    ``inputs`` are the kiln.Input specs it was compiled for and ``device`` the device its engines
    run on (kiln.save exports with them by default).
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        out_spec,
        report: CompileReport,
        inputs: Sequence[Input] = (),
        device: torch.device | None = None,
        kwarg_names: Sequence[str] = (),
        equal_sizes: Sequence = (),
    ):
        super().__init__()
        self.graph_module = graph_module
        self._out_spec = out_spec
        self.report = report
        self.inputs = list(inputs)
        self.device = device
        # Keyword inputs, after the positional ones in self.inputs; and the input sizes that must
        # be equal (((input, dim), (input, dim)) pairs, from torch.export's equality guards).
        self.kwarg_names = list(kwarg_names)
        self.equal_sizes = list(equal_sizes)
        # Where the model branches on tensor values, the engines follow the example inputs'
        # branches (kiln/export.py, _Speculate); a call whose values take another one fails the
        # graph's runtime assertion and runs `eager_model` (kept out of this module's state).
        self.speculated: list[str] = []
        self.__dict__["eager_model"] = None
        self.ran_eagerly = False  # whether a call has run eager_model (warned then)

    def plans(self) -> list:
        """The kiln.Plan of each engine, in execution order (kiln.plans(module) for any module)."""
        from kiln import runtime

        return runtime.plans(self)

    def forward(self, *args, **kwargs):
        positional = len(self.inputs) - len(self.kwarg_names)
        if set(kwargs) != set(self.kwarg_names) or (self.kwarg_names and len(args) != positional):
            raise _C.KilnError(
                f"this module was compiled for {positional} positional input(s) and keyword "
                f"inputs {self.kwarg_names}; called with {len(args)} positional and "
                f"{sorted(kwargs)}: pass the inputs it was compiled for"
            )
        if all(isinstance(a, torch.Tensor) for a in args):  # the common call, without pytree
            flat = list(args)
        else:
            flat = pytree.tree_leaves(args)
        flat += [kwargs[name] for name in self.kwarg_names]
        check_tensor_inputs(flat)
        for (ka, da), (kb, db) in self.equal_sizes:
            a, b = flat[ka].shape[da], flat[kb].shape[db]
            if a != b:
                raise _C.KilnError(
                    f"input {self._input_name(ka)} dim {da} is {a} but input "
                    f"{self._input_name(kb)} dim {db} is {b}: the model was traced with them equal "
                    "(torch.export guard), so the engines are only valid when they are"
                )
        try:
            engine = self._single_engine()
            if engine is not None:
                outputs = torch.ops.kiln.execute_engine(flat, engine.engine)
            else:
                outputs = self.graph_module(*flat)
        except RuntimeError as error:
            if self.speculated and str(error).startswith("Runtime assertion failed"):
                return self._other_branch(error, args, kwargs)
            # An engine's error crosses torch's op dispatch as a RuntimeError("Kiln...").
            if isinstance(error, _C.KilnError) or not str(error).startswith("Kiln"):
                raise
            raise _C.KilnError(str(error)) from error
        if self._out_spec.is_leaf():
            return outputs[0]
        return pytree.tree_unflatten(list(outputs), self._out_spec)

    def _single_engine(self):
        """The EngineModule when graph_module is exactly one engine on the inputs in order,
        returning its outputs in order, and no hook asks to see it called: forward then calls the
        engine's op itself (the GraphModule and EngineModule calls cost about 6 us a call)."""
        gm = self.graph_module
        if self.__dict__.get("_direct_for") is not gm:
            self.__dict__["_direct_for"] = gm
            self.__dict__["_direct"] = _single_engine_module(gm)
        engine = self.__dict__["_direct"]
        if engine is None or engine._forward_hooks or engine._forward_pre_hooks:
            return None
        hooks = torch.nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return None
        return engine

    def _other_branch(self, error, args, kwargs):
        """This call's values take a branch the engines were not built for: the model's own
        PyTorch code runs it (warned once), or, without the model, a KilnError says why."""
        where = "; ".join(self.speculated)
        if self.eager_model is None:
            raise _C.KilnError(
                f"this call reads another value from a tensor than the example inputs did "
                f"({where}), and the engines only hold what those read ({error}); compile the "
                "model with torch.compile(model, backend='kiln') or with example inputs like this"
            ) from error
        if not self.ran_eagerly:
            self.ran_eagerly = True
            log(
                "warning",
                f"kiln: a call reads another value from a tensor than the example inputs did "
                f"({where}); such calls run the model in PyTorch",
            )
        return self.eager_model(*args, **kwargs)

    def _input_name(self, k: int) -> str:
        positional = len(self.inputs) - len(self.kwarg_names)
        return str(k) if k < positional else repr(self.kwarg_names[k - positional])


def _single_engine_module(gm: torch.fx.GraphModule):
    """gm's one EngineModule when gm is placeholders -> that module on all of them in order ->
    its outputs in order (one, or each by getitem), else None."""
    from kiln.runtime import EngineModule

    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_module"]
    rest = [n for n in nodes if n.op not in ("placeholder", "call_module", "output")]
    if len(calls) != 1 or calls[0].kwargs or list(calls[0].args) != inputs:
        return None
    engine = gm.get_submodule(calls[0].target)
    if not isinstance(engine, EngineModule):
        return None
    outs = nodes[-1].args[0]
    if not isinstance(outs, (tuple, list)):
        return None
    count = len(engine.engine.output_names())
    if count == 1:
        ok = not rest and list(outs) == [calls[0]]
    else:
        ok = len(rest) == count and list(outs) == rest
        ok = ok and all(
            n.op == "call_function" and n.target is operator.getitem and n.args == (calls[0], k)
            for k, n in enumerate(rest)
        )
    return engine if ok else None


def check_tensor_inputs(values) -> None:
    """Refuses, with a message that says what to pass, a numpy input (it used to fail deep
    inside torch: "'int' object is not callable") and a meta-device input."""
    for k, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            # A meta tensor has no data: engines used to return an uninitialized CPU tensor.
            if v.device.type == "meta" and not isinstance(v, torch._subclasses.FakeTensor):
                raise _C.KilnError(
                    f"input {k} is on the meta device, which holds no data for an engine to read; "
                    "pass a CPU or CUDA tensor"
                )
        elif type(v).__module__.startswith("numpy"):
            raise _C.KilnError(
                f"input {k} is a {type(v).__module__}.{type(v).__name__}; Kiln modules take torch "
                "tensors: pass torch.from_numpy(x) (kiln.Engine.execute takes numpy arrays)"
            )


def compile(  # noqa: A001 (kiln.compile, as torch_tensorrt.compile)
    module,
    inputs: Sequence,
    *,
    ir: str = "auto",
    enabled_precisions: Iterable = (torch.float32,),
    min_block_size: int = 5,
    torch_executed_ops: Iterable = (),
    torch_ops_in_engine: Iterable | str = "auto",
    require_full_compilation: bool = False,
    workspace_size: int | None = None,
    optimization_level: int | None = None,
    device=None,
    dry_run: bool = False,
    debug: bool = False,
    timing_cache=True,
    cache_dir=True,
    cache_size: int | None = None,
    tactic_timing: bool | None = None,
    cuda_graphs: bool = True,
    truncate_double: bool = False,
    kwarg_inputs: dict | None = None,
    calibrator=None,
):
    """Compiles ``module`` (an nn.Module or a torch.export.ExportedProgram) for ``inputs``.

    kwarg_inputs: {name: kiln.Input or example tensor} for keyword inputs (``input_ids=``,
    ``attention_mask=``); the compiled module is then called with the same keywords.
    inputs: one kiln.Input or example tensor per positional input (dynamic dims: where the
    strict torch.export cannot prove a guard over a range, the export is retried with Dim.DYNAMIC
    hints and the guards are checked over the whole range; a KilnError says where one fails).
    ir: "export" (torch.export),
    "torchscript" (a torch.jit.ScriptModule, compiled by the C++ TorchScript frontend; returns a
    ScriptModule) or "auto" (torchscript for a ScriptModule, else export).
    enabled_precisions: what the engines may compute in besides float32 (always on): "fp16",
    "bf16", "tf32", or torch.float16 / torch.bfloat16, "float16", "half", "bfloat16" (and
    "fp32" / torch.float32 / "float32"; kiln.dtypes.precision_name); a ValueError names any
    other. min_block_size: smaller engine segments run in PyTorch (not with
    require_full_compilation). torch_executed_ops: op
    overloads (``torch.ops.aten.gelu.default`` or "aten.gelu.default") that always run in
    PyTorch. torch_ops_in_engine: ops (``torch.ops.mylib.myop.default``, "mylib::myop") that run
    through PyTorch *inside* the engine, as one of its layers, instead of splitting it (a
    torch.library custom op without a converter; docs/plugins.md); such engines need torch
    (libkiln_runtime) where they run. "auto" (the default, alone or in the list) also runs so
    every op without a converter that is functional, shape-static and graph-safe
    (kiln/torch_ops.py) wherever a graph break on it would split an engine; () turns that off.
    require_full_compilation: raise a KilnError listing every
    node that cannot run in an engine instead of running it in PyTorch. workspace_size /
    optimization_level: builder options. device: "cuda" (the default when a GPU is visible),
    "cuda:N", "cpu" (engines on the CPU reference backend) or "auto"; a torch.device too.
    dry_run: partition only and return a CompileReport. debug: log the KGraph and the report at
    level "info".
    timing_cache: the persistent tactic timing cache of CUDA builds: True (the default) uses
    ``$XDG_CACHE_HOME/kiln/timing.cache`` (``~/.cache/kiln/timing.cache``), a path uses that
    file, False/None uses none. tactic_timing: time layers' alternative kernels (default None:
    on unless KILN_TACTIC_TIMING=0).
    cache_dir: the engine cache (docs/refit.md): engines built before for the same graph, input
    specs, options, GPU and versions are taken from it and refitted with this model's weights
    instead of built. True (the default) uses ``$XDG_CACHE_HOME/kiln/engines`` unless the
    environment sets KILN_ENGINE_CACHE=0; a path uses that directory; False/None uses none. The
    directory also keeps whole compiled modules, keyed by the model's code, configuration,
    inputs and options (kiln/module_cache.py): a second compile of the same model skips the
    export too (KILN_MODULE_CACHE=0 turns that layer off).
    cache_size: bytes the cache may hold (default 4 GiB); least recently used entries go first.
    cuda_graphs: CUDA engines capture and replay CUDA graphs per input shapes (default True; a
    runtime setting, not saved: loaded modules use the default, and KILN_CUDA_GRAPHS=0 turns
    graphs off process-wide).
    truncate_double: Kiln engines compute in float32 at most. By default every op that computes in
    float64 runs in PyTorch (the report says so); True runs those ops in engines in float32
    (inputs and outputs keep their float64 dtype at the module boundary), as
    torch_tensorrt's truncate_double does. The TorchScript frontend always keeps float64 in
    PyTorch.
    calibrator: a kiln.Calibrator, for INT8 (torch.int8 or "int8" in enabled_precisions) in a model
    without quantize/dequantize ops of its own: its batches calibrate the activation ranges
    (kiln/calibration.py, docs/quantization.md). A model with Q/DQ ops (QAT, pt2e) needs none.
    For FP8 (torch.float8_e4m3fn in enabled_precisions, with torch.float16) it is required: its
    ranges scale the linear layers' inputs to float8 e4m3, which run as FP8 GEMMs on sm_89+.
    """
    if ir not in ("auto", "export", "torchscript"):
        raise ValueError(f"ir must be 'auto', 'export' or 'torchscript', got {ir!r}")
    int8, enabled_precisions = _split_int8(enabled_precisions)
    fp8 = _has_fp8(enabled_precisions)
    if int8 and fp8:
        raise ValueError(
            "enabled_precisions has both torch.int8 and torch.float8_e4m3fn: choose one "
            "(FP8 for transformers on sm_89+, INT8 for convolutions)"
        )
    if calibrator is not None and not (int8 or fp8):
        raise ValueError(
            "a calibrator is for INT8 or FP8: add torch.int8 or torch.float8_e4m3fn to "
            "enabled_precisions"
        )
    device = device_name("auto" if device is None else device, allow_auto=True)
    device = torch.device(("cuda" if _cuda() else "cpu") if device == "auto" else device)
    # One CompileOptions for either frontend; a ValueError names a bad precision up front.
    options = compile_options(
        device,
        {
            "enabled_precisions": enabled_precisions,
            "min_block_size": min_block_size,
            "torch_executed_ops": torch_executed_ops,
            "torch_ops_in_engine": torch_ops_in_engine,
            "require_full_compilation": require_full_compilation,
            "workspace_size": workspace_size,
            "optimization_level": optimization_level,
            "timing_cache": timing_cache,
            "cache_dir": cache_dir,
            "cache_size": cache_size,
            "tactic_timing": tactic_timing,
            "cuda_graphs": cuda_graphs,
            "dry_run": dry_run,
            "int8": int8,
        },
    )
    auto_ops = automatic_torch_ops({"torch_ops_in_engine": torch_ops_in_engine})
    if options.torch_ops_in_engine:  # their layer's op is defined by libkiln_runtime
        from kiln import runtime

        runtime.load_library()
    specs = [i if isinstance(i, Input) else Input.from_tensor(i) for i in inputs]
    level = "info" if debug else "verbose"
    if ir == "torchscript" or (ir == "auto" and isinstance(module, torch.jit.ScriptModule)):
        from kiln import torchscript

        if kwarg_inputs:
            raise ValueError(
                "kwarg_inputs needs ir='export': TorchScript modules take positional inputs"
            )
        if int8 or fp8:
            raise ValueError(
                "INT8 and FP8 need ir='export' (the TorchScript frontend has no quantization yet)"
            )

        if auto_ops and isinstance(module, torch.jit.ScriptModule):
            options.automatic_torch_ops = torch_ops.automatic(torch_ops.script_ops(module), device)
        with progress_bars():
            result = torchscript.compile(module, specs, options, device)
        report = result if dry_run else result.report
        log(level, "kiln.compile: " + report.text)
        return result

    kwarg_inputs = dict(kwarg_inputs or {})
    kwarg_names = list(kwarg_inputs)
    specs += [i if isinstance(i, Input) else Input.from_tensor(i) for i in kwarg_inputs.values()]
    cache_key = None
    if options.engine_cache_dir and not (dry_run or int8 or fp8):
        cache_key = _module_cache_key(
            module, specs, kwarg_names, options, truncate_double, device, auto_ops
        )
        if cache_key is not None:
            cached = module_cache.load(options.engine_cache_dir, cache_key, module, cuda_graphs)
            if cached is not None:
                log(level, "kiln.compile (from the engine cache): " + cached.report.text)
                return cached
    with progress_bars():
        with step("exporting"):
            given = [*inputs, *kwarg_inputs.values()]
            examples = [t if isinstance(t, torch.Tensor) else None for t in given]
            program, equal_sizes = export_program(module, specs, device, kwarg_names, examples)
        weights = {}
        if int8:
            weights = _int8(program, calibrator, device, specs)
        elif fp8:
            weights = _fp8(program, calibrator, device, specs)
        with step("lowering"):
            lowered = FxLowering(program, specs, truncate_double=truncate_double, params=weights)
        if auto_ops:
            ops = torch_ops.fx_ops(program.graph_module.graph)
            options.automatic_torch_ops = torch_ops.automatic(ops, device)
        log(level, "kiln.compile: KGraph\n" + lowered.graph.summary())
        segments, driver_report, plans = _C.compile_graph(
            lowered.graph, options, lowered.range, lowered.torch_nodes
        )
        report = CompileReport.from_driver(driver_report)
        speculated = program.graph_module.meta.get(SPECULATED, [])
        if speculated:
            set_apart_checks(report, program.graph_module.graph, speculated)
        log(level, "kiln.compile: " + report.text)
        if dry_run:
            return report
        graph_module = assemble(lowered, segments, plans, device, options.cuda_graphs)
    compiled = CompiledModule(
        graph_module, program.call_spec.out_spec, report, specs, device, kwarg_names, equal_sizes
    )
    compiled.speculated = speculated
    if compiled.speculated and isinstance(module, torch.nn.Module):
        compiled.__dict__["eager_model"] = module
    names = (
        module.state_dict().keys()
        if isinstance(module, torch.nn.Module)
        else program.state_dict.keys()
    )
    compiled.refit_info = refit_info(lowered, program, graph_module, names, bool(weights))
    if cache_key is not None and not compiled.speculated:  # (a cached one has no eager_model)
        module_cache.store(
            options.engine_cache_dir, cache_key, compiled, options.engine_cache_max_bytes
        )
    return compiled


def _module_cache_key(
    module, specs, kwarg_names, options, truncate_double, device, auto_ops
) -> str | None:
    """The compiled-module cache's key for this compile (kiln/module_cache.py), or None where that
    cache is off (KILN_MODULE_CACHE=0) or cannot fingerprint the model (the log says why)."""
    if not isinstance(module, torch.nn.Module) or os.environ.get("KILN_MODULE_CACHE") == "0":
        return None
    decisive = {
        "precisions": list(options.precisions),
        "min_block_size": options.min_block_size,
        "torch_executed_ops": list(options.torch_executed_ops),
        "torch_ops_in_engine": list(options.torch_ops_in_engine),
        "automatic_torch_ops": auto_ops,
        "require_full_compilation": options.require_full_compilation,
        "workspace_size": options.workspace_size,
        "optimization_level": options.optimization_level,
        "tactic_timing": options.tactic_timing,
        "truncate_double": truncate_double,
        "device": device,
        # What converts the graph besides Kiln itself: Python converters (their code) and the
        # plugins loaded (a cached module from another set of them would ignore this one's).
        "python_converters": plugins.registered_converters(),
        "plugins": _C.registered_plugins(),
    }
    try:
        return module_cache.key(module, specs, kwarg_names, decisive)
    except Exception as reason:  # noqa: BLE001 (NotCacheable, or an attribute that fails to read)
        log("verbose", f"kiln.compile: the compiled-module cache skips this model: {reason}")
        return None


def _split_int8(precisions) -> tuple[bool, list]:
    """(whether INT8 is asked for, the other precisions)."""
    if isinstance(precisions, str) or not hasattr(precisions, "__iter__"):
        precisions = [precisions]
    int8 = [p for p in precisions if str(p).removeprefix("torch.") in ("int8", "i8")]
    rest = [p for p in precisions if p not in int8]
    return bool(int8), rest or [torch.float32]


def _int8(program, calibrator, device, specs) -> dict:
    """INT8: a Q/DQ model as it is; otherwise calibration inserts the quantization (returns the
    fake-quantized weights for the lowering)."""
    from kiln.calibration import has_qdq, quantize_program

    if calibrator is None:
        if has_qdq(program):
            return {}
        raise _C.KilnError(
            "kiln.compile: INT8 needs either a calibrator (calibrator=kiln.Calibrator(batches)) "
            "or a model that carries its own quantize/dequantize ops (QAT or pt2e); this model "
            "has none"
        )
    weights, count = quantize_program(program, calibrator, device, specs)
    log("info", f"kiln.compile: INT8 calibration quantized {count} layers")
    return weights


def _has_fp8(precisions) -> bool:
    return any(str(p).removeprefix("torch.") in ("float8_e4m3fn", "fp8") for p in precisions)


def _fp8(program, calibrator, device, specs) -> dict:
    """FP8: calibration inserts e4m3 quantization before the linear layers (returns their
    weights on the e4m3 grid for the lowering); the builder makes FP8 GEMMs of them."""
    from kiln.calibration import quantize_program

    if calibrator is None:
        raise _C.KilnError(
            "kiln.compile: FP8 needs a calibrator (calibrator=kiln.Calibrator(batches, "
            "algorithm='minmax')) for the activations' ranges"
        )
    weights, count = quantize_program(program, calibrator, device, specs, fmt="fp8")
    log("info", f"kiln.compile: FP8 calibration quantized {count} linear layers")
    return weights


def _cuda() -> bool:
    return torch.cuda.is_available() and _C.cuda_device_count() > 0
