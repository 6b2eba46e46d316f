"""Indexing ops (gather, gather_elements, embedding, pad, cumsum, topk): reference backend vs eager
torch (CPU) and CUDA vs eager torch (GPU).

gather / gather_elements / embedding / pad / topk only move elements, so their results must match
exactly. cumsum accumulates in float32 (tolerances at its tests).
"""

import pytest
import torch
import torch.nn.functional as F
from layer_util import DEVICES, TOLERANCE, run_layer

import kiln

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64]
# The host path of the reference engine has no bfloat16 (numpy has none); CUDA covers it.
REF_DTYPES = [torch.float32, torch.float16, torch.int32, torch.int64]


def random_data(shape, dtype):
    if dtype.is_floating_point:
        return (torch.randn(shape) * 3).to(dtype)
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, dtype=dtype)
    return torch.randint(-1000, 1000, shape, dtype=dtype)


def random_indices(shape, n, dtype):
    """Indices in [-n, n): negative ones exercise the wrap-around."""
    return torch.randint(-n, n, shape, dtype=dtype) if n else torch.zeros(shape, dtype=dtype)


def dtypes_for(target):
    return GPU_DTYPES if target == "cuda" else REF_DTYPES


# ---- gather ----

# (data shape, indices shape, axis); () indices remove the axis, (k,) indices are index_select.
GATHER_CASES = [
    ((5,), (), 0),
    ((4, 7), (3,), 1),
    ((4, 7), (2, 3), -1),
    ((3, 4, 5), (6,), -2),
    ((3, 4, 5), (2, 2), 0),
    ((3, 13), (0,), 1),
    ((2, 3, 5), (), 2),
]


def torch_take(data, indices, axis):
    axis %= data.dim()
    n = data.shape[axis]
    flat = torch.where(indices < 0, indices + n, indices).reshape(-1).long()
    out = data.index_select(axis, flat)
    return out.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1 :])


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", GATHER_CASES)
def test_gather_matches_torch(target, index_dtype, case):
    data_shape, idx_shape, axis = case
    for dtype in dtypes_for(target):
        data = random_data(data_shape, dtype)
        idx = random_indices(idx_shape, data_shape[axis], index_dtype)
        # dynamic dim 0 of data, except where dim 0 is the gathered axis of a rank-1 tensor
        dynamic = len(data_shape) > 1
        got = run_layer(lambda net, d, i: net.add_gather(d, i, axis), [data, idx], target, dynamic)
        assert torch.equal(got, torch_take(data, idx, axis)), dtype


@pytest.mark.parametrize("target", DEVICES)
def test_gather_with_constant_indices(target):
    data = torch.randn(6, 9)
    idx = torch.tensor([[8, -9], [0, 4]])
    got = run_layer(
        lambda net, d: net.add_gather(d, net.add_constant(idx), 1), [data], target, True
    )
    assert torch.equal(got, torch_take(data, idx, 1))


def test_gather_out_of_range_index_is_refused_by_reference():
    data, idx = torch.randn(3, 4), torch.tensor([1, 4])
    with pytest.raises(kiln.KilnError, match=r"layer 'g' \(gather\): index 4 is out of range"):
        run_layer(lambda net, d, i: net.add_gather(d, i, 1, name="g"), [data, idx], "cpu")


@pytest.mark.gpu
def test_gather_out_of_range_index_reads_nan_on_cuda():
    # CUDA kernels cannot raise: an index still out of range after one wrap gives NaN (0 for
    # integer data), never another element and never a read outside the tensor (docs/ops.md).
    data, idx = torch.randn(3, 4) + 10, torch.tensor([1, 4, -5, -1])
    got = run_layer(lambda net, d, i: net.add_gather(d, i, 1), [data, idx], "cuda")
    nan = torch.full((3,), float("nan"))
    want = torch.stack([data[:, 1], nan, nan, data[:, 3]], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_gather_known_out_of_range_index_is_refused_at_build_time():
    net = kiln.Network()
    x = net.add_input("x", "float32", (3, 4))
    with pytest.raises(kiln.KilnError, match=r"layer 'g' \(gather\): index -5 is out of range"):
        net.add_gather(x, net.add_constant(torch.tensor([-5])), 1, name="g")


# ---- gather_elements ----

# (data shape, index shape, axis); only the gathered axis of index may be larger than data's.
GATHER_ELEMENTS_CASES = [
    ((4, 5), (4, 3), 1),
    ((4, 5), (6, 5), 0),
    ((2, 3, 4), (2, 3, 4), -1),
    ((2, 3, 7), (1, 2, 7), -2),
    ((9,), (13,), 0),
    ((3, 4), (0, 4), 0),
]


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("case", GATHER_ELEMENTS_CASES)
def test_gather_elements_matches_torch(target, index_dtype, case):
    data_shape, idx_shape, axis = case
    for dtype in dtypes_for(target):
        data = random_data(data_shape, dtype)
        n = data_shape[axis]
        idx = random_indices(idx_shape, n, index_dtype)
        want = torch.gather(data, axis, torch.where(idx < 0, idx + n, idx).long())
        # data and index share a dynamic dim 0 where they have the same dim 0
        dynamic = (0, 1) if len(data_shape) > 1 and idx_shape[0] == data_shape[0] else ()
        (got,) = run_layer(
            lambda net, d, i: [net.add_gather_elements(d, i, axis)], [data, idx], target, dynamic
        )
        assert torch.equal(got, want), dtype


# ---- embedding ----


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("idx_shape", [(), (5,), (2, 3), (0, 4)])
def test_embedding_matches_torch(target, index_dtype, idx_shape):
    for dtype in [d for d in dtypes_for(target) if d.is_floating_point]:
        weight = random_data((11, 7), dtype)
        idx = torch.randint(0, 11, idx_shape, dtype=index_dtype)
        got = run_layer(lambda net, w, i: net.add_embedding(w, i), [weight, idx], target)
        assert torch.equal(got, F.embedding(idx.long(), weight)), dtype


@pytest.mark.parametrize("target", DEVICES)
def test_embedding_with_dynamic_batch_of_indices(target):
    idx = torch.randint(0, 10, (5, 3))  # negative indices are out of range, as in F.embedding
    weight = torch.randn(10, 33)
    got = run_layer(
        lambda net, i: net.add_embedding(net.add_constant(weight), i), [idx], target, dynamic=True
    )
    assert torch.equal(got, F.embedding(idx, weight))


# ---- pad ----

# (shape, pads) in torch F.pad order, of forms torch supports for every mode.
PAD_CASES = [
    ((3, 7), (2, 3)),
    ((3, 7), (0, 6)),
    ((2, 3, 4, 5), (1, 2, 3, 0)),
    ((2, 3, 4, 5), (-1, 2, 1, -2)),
    ((2, 2, 3, 4, 5), (1, 1, 2, 0, 0, 2)),
    ((2, 5, 9), (-3, -2)),
]


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize("case", PAD_CASES)
def test_pad_matches_torch(target, mode, case):
    shape, pads = case
    for dtype in dtypes_for(target):
        x = random_data(shape, dtype)
        value = 1.5 if dtype.is_floating_point else 3.0
        extra = {"value": value} if mode == "constant" else {}
        # torch has no reflect/replicate for integer tensors; float64 holds every value exactly
        want = F.pad(x.double(), pads, mode=mode, **extra).to(dtype)
        got = run_layer(lambda net, t, v=value: net.add_pad(t, pads, mode, v), [x], target, True)
        assert torch.equal(got, want), dtype


# Constant padding of the last dim only (a channels-last input padded to 8 channels: CUDA takes a
# two-level kernel), with pads torch's other modes would refuse.
@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "case", [((2, 4, 6, 3), (0, 5)), ((2, 5, 7, 3), (1, 12)), ((3, 5, 2), (3, 1)), ((4, 1), (2, 0))]
)
def test_pad_constant_last_dim(target, case):
    shape, pads = case
    for dtype in [*dtypes_for(target), torch.int8]:  # int8: an INT8 stem's input padded to 16
        x = random_data(shape, dtype)
        got = run_layer(lambda net, t: net.add_pad(t, pads, "constant", 0.0), [x], target, True)
        assert torch.equal(got, F.pad(x, pads)), dtype


@pytest.mark.parametrize("target", DEVICES)
def test_pad_constant_of_empty_dim_and_bool(target):
    x = torch.randn(0, 3)
    got = run_layer(lambda net, t: net.add_pad(t, [1, 1, 2, 0], value=-2.0), [x], target)
    assert torch.equal(got, F.pad(x, (1, 1, 2, 0), value=-2.0))
    b = torch.rand(4, 5) > 0.5
    got = run_layer(lambda net, t: net.add_pad(t, [1, 2], value=1.0), [b], target)
    assert torch.equal(got, F.pad(b, (1, 2), value=True))


# ---- cumsum ----

# (shape, axis): the last axis takes the row-scan kernel (1000 crosses several 256-wide tiles),
# the others the per-line kernel.
CUMSUM_CASES = [
    ((7,), 0),
    ((3, 1000), -1),
    ((4, 5, 6), 1),
    ((4, 5, 6), 0),
    ((2, 300, 3), -2),
    ((0, 5), 1),
]
FLAGS = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (exclusive, reverse)


def torch_cumsum(x, axis, exclusive, reverse):
    y = x.flip(axis) if reverse else x
    s = y.cumsum(axis, dtype=torch.float64 if x.is_floating_point() else torch.int64)
    if exclusive:
        s = torch.cat(
            [torch.zeros_like(s.narrow(axis, 0, 1)), s.narrow(axis, 0, s.shape[axis] - 1)], axis
        )
    return s.flip(axis) if reverse else s


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("case", CUMSUM_CASES)
def test_cumsum_matches_torch(target, flags, case):
    shape, axis = case
    exclusive, reverse = flags
    for dtype in dtypes_for(target):
        x = (
            (torch.rand(shape) * 2 - 1).to(dtype)
            if dtype.is_floating_point
            else random_data(shape, dtype)
        )
        got = run_layer(
            lambda net, t: net.add_cumsum(t, axis, bool(exclusive), bool(reverse)),
            [x],
            target,
            dynamic=len(shape) > 1 and axis % len(shape) != 0,
        )
        want = torch_cumsum(x, axis, exclusive, reverse)
        if not dtype.is_floating_point:
            assert torch.equal(got, want.to(dtype)), dtype  # int32 wraps like torch's int32 sums
            continue
        # float32 accumulation over n terms of |x| <= 1: rounding error below
        # n * 2^-24 * max|partial sum|, plus the one rounding to the output dtype (TOLERANCE).
        n = shape[axis]
        bound = n * 2.0**-24 * float(want.abs().max()) if want.numel() else 0.0
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(
            got.double(), want.to(dtype).double(), rtol=tol["rtol"], atol=tol["atol"] + bound
        )


# ---- topk ----

# (shape, k, axis); inputs are permutations (no ties) so indices compare exactly.
TOPK_CASES = [
    ((10,), 3, 0),
    ((3, 37), 5, -1),
    ((4, 9, 6), 9, 1),
    ((2, 300), 17, 1),
    ((5, 8), 0, -1),
    ((6, 250), 250, -1),
    ((7, 3, 2), 2, 0),
]


def permutation(shape, axis, dtype):
    """A random permutation of distinct values along `axis` for every line: no ties, and exactly
    representable in every dtype (|v| <= 150 < 256, scaled by a power of two for floats)."""
    n = shape[axis]
    x = (torch.argsort(torch.rand(shape), dim=axis) - n // 2).to(dtype)
    return x / 4 if dtype.is_floating_point else x


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("case", TOPK_CASES)
def test_topk_matches_torch(target, largest, case):
    shape, k, axis = case
    for dtype in dtypes_for(target):
        x = permutation(shape, axis, dtype)
        got_v, got_i = run_layer(
            lambda net, t: net.add_topk(t, k, axis, bool(largest)).outputs,
            [x],
            target,
            dynamic=(0,) if len(shape) > 1 and axis % len(shape) != 0 else (),
        )
        want_v, want_i = torch.topk(x, k, axis, largest=bool(largest))
        assert got_i.dtype == torch.int64
        assert torch.equal(got_v, want_v), dtype
        assert torch.equal(got_i, want_i), dtype


def test_topk_unsorted_gives_the_same_set():
    x = permutation((4, 50), -1, torch.float32)
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, 7, sorted=False).outputs, [x], "cpu")
    want_v, want_i = torch.topk(x, 7, sorted=False)
    assert torch.equal(got_v.sort(-1).values, want_v.sort(-1).values)
    assert torch.equal(got_i.sort(-1).values, want_i.sort(-1).values)
    assert torch.equal(x.gather(-1, got_i), got_v)


@pytest.mark.parametrize("target", DEVICES)
def test_topk_orders_nan_first_like_torch(target):
    x = torch.tensor([[1.0, float("nan"), 3.0, -2.0], [0.5, -1.0, 2.0, 7.0]])
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, 2).outputs, [x], target)
    want_v, want_i = torch.topk(x, 2)
    torch.testing.assert_close(got_v, want_v, equal_nan=True)
    assert torch.equal(got_i, want_i)


@pytest.mark.gpu
def test_topk_cuda_at_the_largest_supported_axis():
    x = torch.randperm(4096 * 3).reshape(3, 4096).float()
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, 100).outputs, [x], "cuda")
    want_v, want_i = torch.topk(x, 100)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,k,largest",
    [(4097, 3, True), (10000, 2048, False), (120000, 1000, True), (1000003, 5, True)],
)
def test_topk_cuda_on_an_axis_longer_than_one_block_sorts(n, k, largest):
    """Rows over 4096 elements go through candidate passes (the detection models' RPN takes the
    top 1000 of 120,000 anchors); permutations (no ties) so indices compare exactly, along the
    last axis and along a strided one."""
    x = torch.stack([torch.randperm(n) for _ in range(2)]).float() - n // 2
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, k, -1, largest).outputs, [x], "cuda")
    want_v, want_i = torch.topk(x, k, -1, largest=largest)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)
    xt = x.t().contiguous().to(torch.int64)
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, k, 0, largest).outputs, [xt], "cuda")
    want_v, want_i = torch.topk(xt, k, 0, largest=largest)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)


@pytest.mark.gpu
def test_topk_cuda_long_axis_keeps_nan_first_and_ties_by_index():
    """float16 with many ties and NaNs over 3 passes: the order torch's CPU topk gives (NaN above
    every number, equal values by lower index)."""
    x = (torch.randint(-50, 50, (3, 30000)) / 4).half()
    x[0, 17] = x[1, 29999] = x[2, 4096] = float("nan")
    got_v, got_i = run_layer(lambda net, t: net.add_topk(t, 600).outputs, [x], "cuda")
    want_v, want_i = _stable_topk(x, 600)
    torch.testing.assert_close(got_v, want_v, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(got_i, want_i)


def _stable_topk(x, k):
    """Largest first, NaN above every number, ties by lower index (a stable descending sort)."""
    key = torch.where(x.isnan(), torch.tensor(1e6), x.float())
    idx = torch.argsort(key, dim=-1, descending=True, stable=True)[..., :k]
    return x.gather(-1, idx), idx


@pytest.mark.gpu
def test_topk_cuda_refuses_a_large_k_on_a_long_axis():
    x = torch.randn(2, 5000)
    with pytest.raises(
        kiln.KilnError,
        match=r"layer 't' \(topk\): the CUDA topk kernel takes k up to 2048 on an axis",
    ):
        run_layer(lambda net, t: net.add_topk(t, 2049, name="t").outputs, [x], "cuda")


# ---- errors ----


def network_with(shape, dtype="float32"):
    net = kiln.Network()
    return net, net.add_input("x", dtype, shape)


def test_gather_bad_axis_is_refused():
    net, x = network_with((3, 4))
    i = net.add_input("i", "int64", (2,))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'g' \(gather\): axis 2 is out of range for rank 2"
    ):
        net.add_gather(x, i, 2, name="g")
    with pytest.raises(kiln.KilnError, match=r"layer 'g' \(gather\): axis -3 is out of range"):
        net.add_gather(x, i, -3, name="g")


def test_float_indices_are_refused():
    net, x = network_with((3, 4))
    f = net.add_input("f", "float32", (2,))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'g' \(gather\): indices must be int32 or int64, got float32"
    ):
        net.add_gather(x, f, 0, name="g")
    with pytest.raises(
        kiln.KilnError, match=r"layer 'e' \(embedding\): indices must be int32 or int64"
    ):
        net.add_embedding(x, f, name="e")
    f2 = net.add_input("f2", "float32", (3, 4))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'ge' \(gather_elements\): index must be int32 or int64"
    ):
        net.add_gather_elements(x, f2, 1, name="ge")


def test_gather_elements_bad_shapes_are_refused():
    net, x = network_with((3, 4))
    i1 = net.add_input("i1", "int64", (3,))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'ge' \(gather_elements\): index \[3\] must have the rank"
    ):
        net.add_gather_elements(x, i1, 0, name="ge")
    i2 = net.add_input("i2", "int64", (4, 2))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'ge' \(gather_elements\): index \[4, 2\] is larger than data"
    ):
        net.add_gather_elements(x, i2, 1, name="ge")


def test_embedding_weight_must_be_2d():
    net, w = network_with((3, 4, 5))
    i = net.add_input("i", "int64", (2,))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'e' \(embedding\): weight must be \[num_embeddings, dim\]"
    ):
        net.add_embedding(w, i, name="e")


def test_pad_errors_are_refused():
    net, x = network_with((2, 3, 4))
    with pytest.raises(
        kiln.KilnError,
        match=r"layer 'p' \(pad\): reflect padding \(4, 0\) of dim 2 must be smaller",
    ):
        net.add_pad(x, [4, 0], "reflect", name="p")
    with pytest.raises(
        kiln.KilnError, match=r"layer 'p' \(pad\): pads must hold \(before, after\) pairs"
    ):
        net.add_pad(x, [1, 2, 3], name="p")
    with pytest.raises(kiln.KilnError, match=r"layer 'p' \(pad\): pads cover 4 dims"):
        net.add_pad(x, [1] * 8, name="p")
    with pytest.raises(kiln.KilnError, match=r"layer 'p' \(pad\): unknown pad mode 'circular'"):
        net.add_pad(x, [1, 1], "circular", name="p")
    with pytest.raises(
        kiln.KilnError, match=r"layer 'p' \(pad\): pads \(-3, -2\) crop dim 2 of size 4 below zero"
    ):
        net.add_pad(x, [-3, -2], name="p")


def test_reflect_pad_too_large_for_a_dynamic_dim_is_refused_at_run_time():
    x = torch.randn(2, 5)
    with pytest.raises(
        kiln.KilnError, match=r"layer 'p' \(pad\): reflect padding \(3, 3\) of dim 0"
    ):
        run_layer(
            lambda net, t: net.add_pad(t, [0, 0, 3, 3], "reflect", name="p"), [x], "cpu", True
        )


def test_cumsum_errors_are_refused():
    net, x = network_with((3, 4))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'c' \(cumsum\): axis 2 is out of range for rank 2"
    ):
        net.add_cumsum(x, 2, name="c")
    with pytest.raises(kiln.KilnError, match=r"layer 'c' \(cumsum\): missing attribute 'axis'"):
        net.add_layer("cumsum", [x], {}, name="c")
    b = net.add_input("b", "bool", (3,))
    with pytest.raises(
        kiln.KilnError, match=r"layer 'c' \(cumsum\): input must be float32.*got bool"
    ):
        net.add_cumsum(b, 0, name="c")
    with pytest.raises(
        kiln.KilnError, match=r"layer 'c' \(cumsum\): attribute 'exclusive' must be 0 or 1"
    ):
        net.add_layer("cumsum", [x], {"axis": 0, "exclusive": 2}, name="c")


def test_topk_errors_are_refused():
    net, x = network_with((3, 4))
    with pytest.raises(
        kiln.KilnError, match=r"layer 't' \(topk\): k = 5 must be between 0 and the size of axis 1"
    ):
        net.add_topk(x, 5, name="t")
    with pytest.raises(kiln.KilnError, match=r"layer 't' \(topk\): axis -3 is out of range"):
        net.add_topk(x, 1, -3, name="t")
    with pytest.raises(kiln.KilnError, match=r"layer 't' \(topk\): missing attribute 'k'"):
        net.add_layer("topk", [x], {}, name="t")


def test_topk_k_above_a_dynamic_dim_is_refused_at_run_time():
    x = torch.randn(3, 4)
    net = kiln.Network()
    t = net.add_input("x", "float32", (3, -1))
    layer = net.add_topk(t, 6, name="t")
    net.mark_output(layer.outputs[0], "v")
    net.mark_output(layer.outputs[1], "i")
    config = kiln.BuilderConfig(device="cpu")
    config.add_optimization_profile({"x": ([3, 1], [3, 8], [3, 8])})
    with pytest.raises(kiln.KilnError, match=r"layer 't' \(topk\): k = 6"):
        engine = kiln.Engine(kiln.Builder().build(net, config), device="cpu")
        engine.create_execution_context().execute({"x": x})
