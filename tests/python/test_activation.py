"""activation layer: reference backend vs eager torch (CPU), CUDA vs reference (GPU)."""

import pytest
import torch
import torch.nn.functional as F
from layer_util import TOLERANCE, run_layer

# type -> (kiln attributes, torch function)
CASES = {
    "relu": ({}, torch.relu),
    "sigmoid": ({}, torch.sigmoid),
    "tanh": ({}, torch.tanh),
    "leaky_relu": ({"alpha": 0.1}, lambda x: F.leaky_relu(x, 0.1)),
    "gelu": ({}, F.gelu),
    "gelu_tanh": ({}, lambda x: F.gelu(x, approximate="tanh")),
    "silu": ({}, F.silu),
    "hardswish": ({}, F.hardswish),
    "hardsigmoid": ({}, F.hardsigmoid),
    "elu": ({"alpha": 0.7}, lambda x: F.elu(x, 0.7)),
    "softplus": ({"beta": 2.0, "threshold": 5.0}, lambda x: F.softplus(x, 2.0, 5.0)),
    "mish": ({}, F.mish),
    "clip": ({"alpha": -0.5, "beta": 1.5}, lambda x: x.clamp(-0.5, 1.5)),
    "selu": ({}, F.selu),
}
SHAPES = [(13,), (3, 127), (2, 3, 5, 7), (0, 4), (1,)]


def add(kind):
    attrs = CASES[kind][0]
    return lambda net, x: net.add_layer("activation", [x], {"type": kind, **attrs})


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_torch(kind, shape):
    x = torch.randn(shape) * 4  # covers the saturating and threshold regions
    got = run_layer(add(kind), [x], "cpu", dynamic=len(shape) > 1)
    # The reference computes in double: the truth is torch's double result rounded to float32
    # (torch's own float32 GELU is 1e-6 off where 1 + erf cancels, seen in CI).
    want = CASES[kind][1](x.double()).float()
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_torch(kind, dtype, shape):
    x = (torch.randn(shape) * 4).to(dtype)
    got = run_layer(add(kind), [x], "cuda", dynamic=len(shape) > 1)
    want = CASES[kind][1](x.double()).to(dtype)  # exact function of the same rounded inputs
    torch.testing.assert_close(got.double(), want.double(), **TOLERANCE[dtype])
