"""matmul (torch.matmul semantics, incl. vectors) and fully_connected (nn.Linear)."""

import pytest
import torch
from layer_util import per_device, run_layer

import kiln

# Accumulation order differs from torch's: float32 needs a few ulp per sqrt(K) terms; float16 /
# bfloat16 results are rounded once from a float32 accumulator (2 ulp), plus torch's own rounding.
TOL = {
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}

MATMUL_SHAPES = [
    ((7,), (7,)),  # dot -> 0-d
    ((5,), (5, 3)),  # vector @ matrix
    ((2, 4, 5), (5,)),  # batched matrix @ vector
    ((6,), (3, 6, 2)),  # vector @ batched
    ((3, 1, 4, 5), (2, 5, 6)),  # broadcast batch
    ((0, 3), (3, 4)),
    ((2, 0), (0, 3)),  # empty inner dim -> zeros
]


def expected(fn, inputs, dtype):
    return fn(*[t.double() for t in inputs]).to(dtype)


@pytest.mark.parametrize(
    "target,dtype,sa,sb",
    per_device(
        cpu=[(torch.float32, sa, sb) for sa, sb in MATMUL_SHAPES],
        cuda=[
            (dtype, sa, sb)
            for dtype in [torch.float32, torch.float16, torch.bfloat16]
            for sa, sb in MATMUL_SHAPES + [((3, 65, 127), (127, 33))]
        ],
    ),
)
def test_matmul(target, dtype, sa, sb, strict_fp32):
    a, b = torch.randn(sa).to(dtype), torch.randn(sb).to(dtype)
    got = run_layer(lambda net, x, y: net.add_matmul(x, y), [a, b], target)
    torch.testing.assert_close(got, expected(torch.matmul, [a, b], dtype), **TOL[dtype])


def test_matmul_transpose_ignored_for_vectors():
    a, b = torch.randn(4), torch.randn(3, 4)
    got = run_layer(
        lambda net, x, y: net.add_matmul(x, y, transpose_a=True, transpose_b=True),
        [a, b],
        "cpu",
    )
    torch.testing.assert_close(got, expected(lambda x, y: x @ y.T, [a, b], torch.float32))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12), (12,), (0, 12)])
def test_fully_connected_reference(shape, bias):
    lin = torch.nn.Linear(12, 7, bias=bias)
    x = torch.randn(shape)
    got = run_layer(
        lambda net, t: net.add_fully_connected(
            t, lin.weight.detach(), lin.bias.detach() if bias else None
        ),
        [x],
        "cpu",
        dynamic=len(shape) > 1,
    )
    with torch.no_grad():
        want = lin.double()(x.double()).float()
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_fully_connected_errors():
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 5))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'fc' \(fully_connected\): input has 5 features"
    ):
        net.add_fully_connected(x, torch.zeros(3, 4), name="fc")
    with pytest.raises(kiln.KilnError, match=r"layer 'fc' \(fully_connected\): bias must be \[3\]"):
        net.add_fully_connected(x, torch.zeros(3, 5), torch.zeros(4), name="fc")
    with pytest.raises(kiln.KilnError, match=r"layer 'mm' \(matmul\): inner dims differ"):
        net.add_matmul(net.add_input("v", "float32", (4,)), torch.zeros(5, 2), name="mm")


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 12), (2, 33, 12), (12,), (0, 12)])
def test_fully_connected_cuda(shape, bias, dtype, strict_fp32):
    w, b = torch.randn(7, 12).to(dtype), torch.randn(7).to(dtype)
    x = torch.randn(shape).to(dtype)
    got = run_layer(
        lambda net, t: net.add_fully_connected(t, w, b if bias else None),
        [x],
        "cuda",
        dynamic=len(shape) > 1,
    )
    want = torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None).to(
        dtype
    )
    torch.testing.assert_close(got, want, **TOL[dtype])
