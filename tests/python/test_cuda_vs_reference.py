"""Differential test: every registered op, built into the same plan for the reference backend and
for CUDA, gives the same result on the same inputs (float32 and float16), with a dynamic batch.
The per-family test files compare each backend with eager PyTorch over larger option matrices;
this one checks the two backends against each other directly and that no op lacks a case."""

import numpy as np
import pytest
import torch
from layer_util import run_layer

from kiln import _C


def f(*shape):
    return ("float", shape)


def i(hi, *shape):
    return ("int", hi, shape)


def b(*shape):
    return ("bool", shape)


def keep(t):
    """A constant kept in its own dtype (a float32 scale under a float16 test)."""
    return ("keep", t)


def distinct(*shape):
    """Tie-free floats (multiples of 1/8, exact in float16): index outputs compare exactly."""
    return ("distinct", shape)


# op -> (inputs, attributes). Inputs: f(shape) a float input (dtype under test), i(hi, shape) an
# int64 input in [0, hi), b(shape) a bool input, distinct(shape) tie-free floats, or a torch
# tensor used as a constant.
CASES = {
    "identity": ([f(3, 5)], {}),
    "matmul": ([f(3, 4, 7), f(7, 6)], {}),
    "fully_connected": ([f(3, 7), torch.randn(5, 7), torch.randn(5)], {}),
    "elementwise": ([f(3, 1, 5), f(4, 5)], {"op": "add"}),
    "activation": ([f(3, 33)], {"type": "gelu"}),
    "unary": ([f(3, 33)], {"op": "sin"}),
    "attention": ([f(3, 2, 9, 16), f(3, 2, 11, 16), f(3, 2, 11, 16)], {"causal": 0}),
    "cast": ([f(3, 17)], {"to": "int32"}),
    "where": ([b(3, 6), f(3, 6), f(1, 6)], {}),
    "arange": ([], {"start": 2, "end": 40, "step": 3, "dtype": "int64"}),
    "fill": ([], {"value": 2.5, "dtype": "float32", "shape": [3, 4]}),
    "resize": ([f(3, 2, 5, 7)], {"mode": "linear", "sizes": [9, 4], "align_corners": 0}),
    # randn grid: sample points inside and outside the image
    "grid_sample": (
        [f(3, 2, 5, 7), f(3, 4, 6, 2)],
        {"mode": "bicubic", "padding_mode": "reflection"},
    ),
    "roi_align": (  # boxes (batch index, x1, y1, x2, y2), one across the top-left edge
        [f(2, 3, 8, 9), torch.tensor([[0.0, 1, 1, 6, 5], [1, 0.5, 2, 8, 7.5], [0, -1, -1, 3, 3]])],
        {"pooled_height": 2, "pooled_width": 3, "aligned": 1},
    ),
    "gather": ([f(3, 10, 4), i(10, 6)], {"axis": 1}),
    "gather_elements": ([f(3, 5), i(5, 3, 4)], {"axis": 1}),
    "scatter_elements": ([f(4, 6), i(4, 5, 6), f(5, 6)], {"axis": 0, "reduction": "add"}),
    "quantize": ([f(3, 17), keep(torch.tensor(0.05)), keep(torch.tensor(2))], {}),
    "dequantize": (
        [keep(torch.randint(-128, 128, (3, 17), dtype=torch.int8)), keep(torch.rand(17))],
        {"axis": 1},
    ),
    "fake_quantize": ([f(3, 4, 5), keep(torch.rand(4) * 0.1), keep(torch.arange(4))], {"axis": 1}),
    "embedding": ([torch.randn(12, 8), i(12, 3, 5)], {}),
    "pad": ([f(3, 4, 6)], {"pads": [2, 1, 1, 2], "mode": "reflect"}),
    "cumsum": ([f(3, 37)], {"axis": 1}),
    "topk": ([distinct(3, 50)], {"k": 5}),
    "convolution": (
        [f(3, 4, 9, 9), torch.randn(6, 2, 3, 3), torch.randn(6)],
        {"groups": 2, "pads": [1, 1]},
    ),
    "deconvolution": (
        [f(3, 4, 5, 5), torch.randn(4, 3, 3, 3)],
        {"strides": [2, 2], "pads": [1, 1]},
    ),
    "pooling": (
        [f(3, 2, 9, 9)],
        {"type": "max", "kernel": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    ),
    "adaptive_pooling": ([f(3, 2, 9, 7)], {"type": "avg", "output_size": [4, 3]}),
    "reshape": ([f(3, 4, 6)], {"shape": [-1, 24]}),
    "transpose": ([f(3, 4, 6)], {"perm": [2, 0, 1]}),
    "space_to_depth": ([f(2, 3, 7, 6)], {"pads": [3, 4, 3, 3], "channels": 4, "layout": "nhwc"}),
    "flatten": ([f(3, 4, 6)], {"start_dim": 1}),
    "squeeze": ([f(3, 1, 6)], {"axes": [1]}),
    "unsqueeze": ([f(3, 6)], {"axes": [1]}),
    "expand": ([f(3, 1, 6)], {"shape": [-1, 4, 6]}),
    "shape": ([f(3, 4)], {}),
    "concat": ([f(3, 4), f(3, 2)], {"axis": 1}),
    "slice": ([f(3, 20)], {"axes": [1], "starts": [-17], "ends": [19], "steps": [3]}),
    "split": ([f(3, 9)], {"axis": 1, "sizes": [2, 7]}),
    "reduce": ([f(3, 5, 33)], {"op": "var", "axes": [0, 2], "keepdim": 1}),
    "arg_reduce": ([distinct(3, 41)], {"op": "argmax", "axis": 1}),
    "softmax": ([f(3, 7, 129)], {"axis": -1, "log": 1}),
    "batch_norm": (
        [f(3, 4, 5), torch.randn(4), torch.randn(4), torch.randn(4), torch.rand(4) + 0.5],
        {},
    ),
    "layer_norm": ([f(3, 5, 48), torch.randn(48), torch.randn(48)], {}),
    "group_norm": ([f(3, 6, 10), torch.randn(6), torch.randn(6)], {"num_groups": 3}),
    "rms_norm": ([f(3, 5, 48), torch.randn(48)], {}),
    # attributes that depend on the dtype under test: a callable of it
    "fused_pointwise": (
        [f(3, 1, 33), f(4, 33), b(4, 33)],
        lambda dtype: {
            "program": f"input 0 {DTYPE_NAMES[dtype]}; input 1 {DTYPE_NAMES[dtype]}; input 2 bool; "
            "elementwise mul %0 %1; activation gelu 0 1 20 %3; where %2 %4 %0; cast float32 %5",
            "outputs": [6, 3],
        },
    ),
    # head size 64: float16 takes the tensor-core kernel on the strided q/k/v rows
    "packed_attention": ([f(3, 9, 3, 2, 64)], {"causal": 1}),
}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}


def test_every_registered_op_has_a_case():
    assert set(CASES) == set(_C.registered_ops())


def make_inputs(specs, dtype):
    feeds = []
    for spec in specs:
        if isinstance(spec, torch.Tensor) or spec[0] == "keep":
            feeds.append(None)
        elif spec[0] == "float":
            feeds.append(torch.randn(spec[1]).to(dtype))
        elif spec[0] == "distinct":
            rows = [torch.randperm(1000)[: spec[1][-1]] for _ in range(int(np.prod(spec[1][:-1])))]
            feeds.append((torch.stack(rows).float() / 8 - 60).reshape(spec[1]).to(dtype))
        elif spec[0] == "int":
            feeds.append(torch.randint(0, spec[1], spec[2]))
        else:
            feeds.append(torch.rand(spec[1]) > 0.5)
    return feeds


def build_and_run(op, specs, attrs, dtype, feeds, target):
    """The op's layer on `target` at optimization_level 0 (the kernels run, nothing is folded):
    tensor specs are constants, the others are fed (`feeds`); dim 0 is dynamic in every fed input
    whose dim 0 is the batch of 3 (not for embedding). Returns every output."""
    fed = [t for t in feeds if t is not None]
    dynamic = [
        n for n, t in enumerate(fed) if t.dim() and t.shape[0] == 3 and op not in ("embedding",)
    ]
    if callable(attrs):
        attrs = attrs(dtype)

    def add(net, *tensors):
        given = iter(tensors)
        inputs = [
            (spec.to(dtype) if spec.is_floating_point() else spec)
            if isinstance(spec, torch.Tensor)
            else spec[1]
            if spec[0] == "keep"
            else next(given)
            for spec in specs
        ]
        return net.add_layer(op, inputs, attrs, name=op).outputs

    return run_layer(add, fed, target, dynamic, level=0)


# float32: kernels sum in different orders (a few ulp per reduction step); float16: both
# backends round once to float16 from float32/double math, so results may differ by one ulp.
TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float16: {"rtol": 2e-3, "atol": 2e-3}}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("op", sorted(CASES))
def test_cuda_matches_reference(op, dtype):
    specs, attrs = CASES[op]
    feeds = make_inputs(specs, dtype)
    ref = build_and_run(op, specs, attrs, dtype, feeds, "cpu")
    got = build_and_run(op, specs, attrs, dtype, feeds, "cuda")
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape and r.dtype == g.dtype, op
        if r.is_floating_point():
            torch.testing.assert_close(g, r, **TOL[dtype])
        else:
            assert torch.equal(g, r), op


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])  # 16-byte groups of channels / one a thread
def test_space_to_depth_to_int8_matches_reference(layout, dtype):
    # The fold of an INT8 stem writing int8 itself (fold_quantize_copies): exactly the reference's
    # quantization, padding zeros, clamping and NaN included.
    attrs = {"pads": [3, 4, 3, 3], "channels": 4, "layout": layout, "output_inv_scale": 9.5}
    attrs.update(output_quant_min=-127, output_quant_max=120)
    x = (torch.randn(3, 3, 7, 6) * 8).to(dtype)
    x[0, 0, 0, :2] = torch.tensor([float("nan"), 0.05])  # NaN -> quant_min; 0.475 rounds to 0
    ref = build_and_run("space_to_depth", [f()], attrs, dtype, [x], "cpu")[0]
    got = build_and_run("space_to_depth", [f()], attrs, dtype, [x], "cuda")[0]
    assert ref.dtype == torch.int8 and torch.equal(got, ref)
    assert (ref == -127).any() and (ref == 120).any()  # both bounds reached
