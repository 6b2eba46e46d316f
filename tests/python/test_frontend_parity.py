"""Both frontends give the same partition and matching outputs.

Each case is compiled twice on the reference backend, through torch.export (ir="export") and
through the TorchScript frontend (ir="torchscript", the module traced), with the same options.
Both go through the same compile driver (driver/compile.h), so the partitions must agree: the
same segments in the same order, each of the same kind, and the same ops running in PyTorch
(with the same reasons). The engine segments' aten ops are not compared: torch.export decomposes
(linear -> addmm, adaptive pooling -> mean) where TorchScript keeps the op, and each frontend
names its nodes its own way. Outputs are compared with each other and with eager on fresh random
inputs: both run the same converters on the same reference kernels in float32, so they agree to
float32 rounding (1e-5); whole models to 1e-4 against eager, as in test_compile.py.
"""

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import kiln
from kiln import runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

sys.path.insert(0, str(Path(__file__).parent))
from test_compile import Block, SmallCNN  # noqa: E402
from test_torchscript import WithLgamma  # noqa: E402


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# name -> (module factory, example input factory, kiln.compile options)
CASES = {
    "small_cnn": (lambda: SmallCNN(), lambda g: torch.randn(2, 3, 16, 16, generator=g), {}),
    "transformer_block": (lambda: Block(), lambda g: torch.randn(2, 10, 32, generator=g), {}),
    "fallback_in_the_middle": (
        lambda: WithLgamma(),
        lambda g: torch.randn(3, 16, generator=g),
        {"min_block_size": 1},
    ),
    "activations": (
        lambda: Fn(lambda x: torch.selu(x) + torch.nn.functional.gelu(x) * torch.sigmoid(x)),
        lambda g: torch.randn(4, 7, generator=g),
        {"min_block_size": 1},
    ),
    "reductions_and_shapes": (
        lambda: Fn(
            lambda x: (x.softmax(-1) * x.mean(1, keepdim=True)).transpose(0, 1).reshape(-1, 6)
        ),
        lambda g: torch.randn(4, 6, 3, generator=g),
        {"min_block_size": 1},
    ),
    "forced_to_pytorch": (
        lambda: Block(),
        lambda g: torch.randn(2, 10, 32, generator=g),
        {"torch_executed_ops": ["aten.gelu.default"], "min_block_size": 1},
    ),
}


def _vision(name):
    torchvision = pytest.importorskip("torchvision")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_models import small_model

    del torchvision
    return small_model(name)


MODELS = {
    "vit_b_16": lambda g: torch.randn(1, 3, 64, 64, generator=g),
    "mobilenet_v3_large": lambda g: torch.randn(1, 3, 64, 64, generator=g),
}


def _partition(report):
    """Segment kinds in order, and the ops of each PyTorch segment."""
    return [
        (s["kind"], Counter(s["ops"]) if s["kind"] == "pytorch" else None) for s in report.segments
    ]


def _both(model, example, **options):
    model = model.eval()
    exported = kiln.compile(model, [example], ir="export", device="cpu", **options)
    traced = torch.jit.trace(model, (example,), check_trace=False)
    scripted = kiln.compile(traced, [example], ir="torchscript", device="cpu", **options)
    return exported, scripted


def _check(model, make_input, options, atol):
    example = make_input(_gen(0))
    exported, scripted = _both(model, example, **options)
    assert exported.report.num_engines == scripted.report.num_engines
    assert _partition(exported.report) == _partition(scripted.report), (
        f"export:\n{exported.report}\ntorchscript:\n{scripted.report}"
    )
    assert sorted((f.target, f.reason) for f in exported.report.fallbacks) == sorted(
        (f.target, f.reason) for f in scripted.report.fallbacks
    )
    for seed in (1, 2):
        x = make_input(_gen(seed))
        with torch.no_grad():
            want = model(x)
            a, b = exported(x), scripted(x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, want, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("name", CASES)
def test_converter_cases_partition_and_outputs_match(name):
    make_model, make_input, options = CASES[name]
    torch.manual_seed(0)
    _check(make_model(), make_input, options, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_model_partition_and_outputs_match(name):
    _check(_vision(name), MODELS[name], {"require_full_compilation": True}, atol=1e-3)


@pytest.mark.parametrize("ir", ["export", "torchscript"])
def test_runtime_and_debug_options_reach_both_frontends(ir):
    # ir="torchscript" used to drop cuda_graphs, timing_cache, tactic_timing and debug.
    model = Block().eval()
    x = torch.randn(2, 10, 32)
    module = torch.jit.trace(model, (x,), check_trace=False) if ir == "torchscript" else model
    lines, level = [], kiln.log.log_level()
    kiln.set_log_sink(lambda severity, message: lines.append((severity, message)))
    kiln.set_log_level("info")  # debug=True logs the report at info
    try:
        compiled = kiln.compile(
            module, [x], ir=ir, device="cpu", cuda_graphs=False, debug=True, timing_cache=False
        )
    finally:
        kiln.set_log_level(level)
        kiln.set_log_sink(None)
    engines = rt.engines(compiled)
    assert engines and all(not e.cuda_graphs() for e in engines)
    assert any(s == "INFO" and "engine segment" in m for s, m in lines), lines
