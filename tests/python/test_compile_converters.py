"""Converters added for the transformer zoo, each compiled from a tiny module and compared with
eager PyTorch on the reference backend (and on CUDA, marked gpu): select, gather, index, slice
with symbolic bounds, cumsum, arange, full / full_like, minimum / maximum, bitwise ops on bool,
clamp with tensor bounds, isinf, any; torch type promotion in arithmetic, comparisons and where;
float64 narrowing; symbolic sizes recomputed across segments.

Integer and bool results must match exactly; float results to 1e-5 (float32 math on both sides,
the reference backend sometimes accumulating in double).
"""

import pytest
import torch
import torch.nn as nn
from layer_util import DEVICES

import kiln
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

TOL = dict(rtol=1e-5, atol=1e-5)


class Fn(nn.Module):
    """A module around a function; torch.export needs a fixed number of positional inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn


class Fn1(Fn):
    def forward(self, a):
        return self.fn(a)


class Fn2(Fn):
    def forward(self, a, b):
        return self.fn(a, b)


class Fn3(Fn):
    def forward(self, a, b, c):
        return self.fn(a, b, c)


class Fn4(Fn):
    def forward(self, a, b, c, d):
        return self.fn(a, b, c, d)


class Fn5(Fn):
    def forward(self, a, b, c, d, e):
        return self.fn(a, b, c, d, e)


def module(fn, arity):
    return [Fn1, Fn2, Fn3, Fn4, Fn5][arity - 1](fn).eval()


def check(fn, inputs, device="cpu", specs=None, shapes=None, engines=1, **options):
    """Compiles fn fully (one engine) and compares with eager on `inputs` (and more shapes);
    `options`: more kiln.compile keywords."""
    model = module(fn, len(inputs))
    inputs = [t.to(device) for t in inputs]
    compiled = kiln.compile(
        model,
        specs or inputs,
        device=device,
        min_block_size=1,
        require_full_compilation=True,
        **options,
    )
    assert compiled.report.num_engines == engines, str(compiled.report)
    for xs in [inputs] + [[t.to(device) for t in s] for s in (shapes or [])]:
        want = model(*xs)
        got = compiled(*xs)
        want, got = (
            (want,) if torch.is_tensor(want) else want,
            (got,) if torch.is_tensor(got) else got,
        )
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
            if w.is_floating_point():
                torch.testing.assert_close(g, w, **TOL)
            else:
                assert torch.equal(g, w)
    return compiled


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(*shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.rand(*shape, generator=g) > 0.5
    return torch.randint(-20, 20, shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim,index", [(0, 1), (1, -1), (2, 3), (-1, -7)])
def test_select(device, dim, index):
    check(lambda x: x.select(dim, index) * 2, [rand(3, 5, 7)], device)


def test_select_dynamic_dim_negative_index():
    spec = kiln.Input(min_shape=(1, 2, 4), opt_shape=(2, 5, 4), max_shape=(4, 9, 4))
    check(lambda x: x[:, -1] + 1, [rand(2, 5, 4)], specs=[spec], shapes=[[rand(3, 9, 4)]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather(device, dim):
    x = rand(4, 6, 5)
    size = x.shape[dim]
    index = torch.randint(0, size, tuple(3 if d == (dim % 3) else n for d, n in enumerate(x.shape)))
    check(lambda a, i: torch.gather(a, dim, i), [x, index], device)


def test_gather_index_smaller_than_self():
    x = rand(4, 6)
    index = torch.randint(0, 6, (2, 3))
    check(lambda a, i: torch.gather(a, 1, i), [x, index])


@pytest.mark.parametrize("device", DEVICES)
def test_index_with_broadcast_integer_indices(device):
    # GPT-2's mask: cumsum[b_idx[:, None, None, None], pos[None, None, :, None]]
    x = rand(3, 7, 2)
    i0 = torch.tensor([2, 0, -1]).view(3, 1, 1)
    i1 = torch.tensor([0, 6, -2, 3]).view(1, 1, 4)
    check(lambda a, p, q: a[p, q], [x, i0, i1], device)
    check(lambda a, p: a[p], [x, torch.tensor([[1, -3], [0, 2]], dtype=torch.int32)], device)


@pytest.mark.parametrize("device", DEVICES)
def test_slice_with_symbolic_bounds(device):
    # Created on the compile device: a CPU table would make eager's result a CPU tensor.
    table = rand(1, 40, seed=5).to(device)

    def fn(ids):
        s = ids.shape[1]
        return table[:, :s] + table[:, 1 : s + 1] + table[:, 2:s:3].sum()

    spec = kiln.Input(min_shape=(1, 6), opt_shape=(2, 8), max_shape=(4, 30), dtype=torch.int64)
    ids = rand(2, 8, dtype=torch.int64)
    check(fn, [ids], device, specs=[spec], shapes=[[rand(3, 30, dtype=torch.int64)]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64, torch.bool])
def test_cumsum(device, dtype):
    check(lambda x: torch.cumsum(x, -1), [rand(3, 9, dtype=dtype)], device)


@pytest.mark.parametrize("device", DEVICES)
def test_arange_full_full_like_follow_dynamic_dims(device):
    def fn(x):
        s = x.shape[1]
        # Factories on x's device, as a model must write them to run on CUDA eagerly.
        pos = torch.arange(0, s, dtype=torch.int64, device=x.device)
        steps = torch.arange(1, s, 2, device=x.device).to(torch.float32)
        ones = torch.full([x.shape[0], s], 3, dtype=torch.int64, device=x.device)
        fill = torch.full_like(x, 0.25)
        true = torch.full([], True, device=x.device)
        return x + pos + fill, ones * pos, steps * 0.5, true & (pos >= 0)

    spec = kiln.Input(min_shape=(1, 4), opt_shape=(2, 6), max_shape=(4, 20))
    check(fn, [rand(2, 6)], device, specs=[spec], shapes=[[rand(3, 17)], [rand(1, 4)]])


@pytest.mark.parametrize("device", DEVICES)
def test_minimum_maximum_bitwise_clamp_isinf_any(device):
    def fn(a, b, m, n):
        c = torch.minimum(a, b) + torch.maximum(a, b.half())  # promotes to float32
        logic = (m & n) | (m ^ n)
        lo = torch.tensor(-0.5, device=a.device)
        hi = torch.tensor(0.75, dtype=torch.float64, device=a.device).float()
        clamped = torch.clamp(a, lo, hi)
        inf = torch.isinf(a / (b > 0).float())
        return c, logic, clamped, inf, torch.any(inf), torch.any(m, dim=1)

    inputs = [
        rand(4, 5),
        rand(4, 5, seed=1),
        rand(4, 5, dtype=torch.bool),
        rand(4, 5, dtype=torch.bool, seed=2),
    ]
    # The float64 constant's clone is float64 data movement: in one engine only when truncated.
    check(fn, inputs, device, truncate_double=True)


@pytest.mark.parametrize("device", DEVICES)
def test_type_promotion_matches_eager(device):
    def fn(i64, f32, f16, flag, i32):
        return (
            i64 * 0.5,  # int64 tensor * float number -> float32
            flag + 1,  # bool + int -> int64
            f16 * torch.tensor(2.0),  # float16 tensor * float32 0-d tensor -> float16
            f16 + f32,  # dim tensors: float32
            i32 + i64,  # int64
            i64 / 3,  # true division -> float32
            i32 < f32,  # compared as float32
            torch.where(flag, i64, f32),  # float32
            i32 + flag,  # int32
        )

    inputs = [
        rand(3, 4, dtype=torch.int64),
        rand(3, 4),
        rand(3, 4, dtype=torch.float16, seed=3),
        rand(3, 4, dtype=torch.bool),
        rand(3, 4, dtype=torch.int32, seed=4),
    ]
    check(fn, inputs, device)


def test_float64_runs_in_pytorch_unless_truncate_double():
    # float64 arithmetic used to run in float32 with only a warning: (x + 1e-9) - x gave 0.
    class Tiny(nn.Module):
        def forward(self, x):
            return ((x + 1e-9) - x) * 2

    fn = Tiny().eval()
    x = torch.ones(3, 4, dtype=torch.float64)
    compiled = kiln.compile(fn, [x], device="cpu", min_block_size=1)
    assert compiled.report.num_engines == 0
    assert all("truncate_double=True" in f.reason for f in compiled.report.fallbacks)
    torch.testing.assert_close(compiled(x), fn(x), rtol=0, atol=0)
    assert compiled(x).abs().min() > 0
    truncated = kiln.compile(fn, [x], device="cpu", min_block_size=1, truncate_double=True)
    assert truncated.report.num_engines == 1 and truncated(x).dtype == torch.float64
    assert truncated(x).abs().max() == 0  # what float32 gives: the user asked for it


def test_truncate_double_narrows_float64_and_keeps_module_dtypes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64))

        def forward(self, x, d):
            return torch.relu((x.double() * self.scale).float() + d.float()), d * 2

    messages = []
    kiln.set_log_sink(lambda severity, message: messages.append(message))
    try:
        model = M().eval()
        x, d = rand(4, 3), rand(4, 3, dtype=torch.float64)
        compiled = kiln.compile(model, [x, d], device="cpu", min_block_size=1, truncate_double=True)
    finally:
        kiln.set_log_sink(None)
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks
    assert any("float64 values run as float32" in m for m in messages)
    got, want = compiled(x, d), model(x, d)
    assert [t.dtype for t in got] == [torch.float32, torch.float64]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, check_dtype=False)


def test_int64_inputs_stay_int64_at_the_boundary():
    def fn(ids):
        return ids * 3 + torch.arange(ids.shape[1])

    compiled = check(fn, [rand(2, 5, dtype=torch.int64)])
    big = torch.full((2, 5), 2**40, dtype=torch.int64)  # does not fit int32: must stay exact
    assert torch.equal(compiled(big), fn(big))


def test_converter_refusals_say_why():
    def fn(x):
        return x[torch.tensor([True, False, True])]

    report = kiln.compile(module(fn, 1), [rand(3, 4)], device="cpu", dry_run=True)
    assert report.fallbacks


@pytest.mark.parametrize("device", DEVICES)
def test_selu(device):
    # aten.selu stays whole (a converter takes it, so export does not decompose it into elu).
    compiled = check(lambda x: torch.selu(x * 3), [rand(4, 33)], device)
    assert "aten.selu.default" in compiled.report.segments[0]["ops"]
