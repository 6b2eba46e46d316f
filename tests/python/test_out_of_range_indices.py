"""Out-of-range indices are never a silent wrong answer.

torch: F.embedding, index_select and torch.gather raise for an index < 0 or >= n; advanced
indexing (x[i], x[i, j]) wraps a negative index once (-n <= i < n) and raises outside. Kiln
matches on the reference backend (a KilnError naming the layer and the index, a RuntimeError
through a compiled module); a CUDA kernel cannot raise without synchronizing, so it writes NaN
(floating data) or 0 (integer data) for such an index, reads nothing out of bounds and leaves
every valid element exact (docs/ops.md, "Out-of-range indices").
"""

import pytest
import torch
import torch.nn as nn
from layer_util import DEVICES, build_plan, run_layer, run_plan

import kiln
from kiln import runtime as rt

needs_runtime = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")


def compile_cpu(model, inputs):
    return kiln.compile(
        model, inputs, device="cpu", min_block_size=1, require_full_compilation=True
    )


# ---- embedding ----------------------------------------------------------------------------------


@needs_runtime
@pytest.mark.parametrize("bad", [-1, -10, 10, 2**40])
def test_compiled_embedding_raises_for_an_index_torch_refuses(bad):
    # The reproducer: index -1 returned the last row where eager raises.
    emb = nn.Embedding(10, 4).eval()
    compiled = compile_cpu(emb, [torch.tensor([[1, 2, 3]])])
    ok = torch.tensor([[0, 9, 4]])
    assert torch.equal(compiled(ok), emb(ok))
    idx = torch.tensor([[1, bad, 3]])
    with pytest.raises(IndexError):
        emb(idx)
    with pytest.raises(
        RuntimeError, match=rf"layer '[^']*' \(embedding\): index {bad} is out of range"
    ):
        compiled(idx)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_embedding_layer_refuses_negative_and_large_indices_on_the_reference_backend(index_dtype):
    weight = torch.randn(7, 5)
    for bad in (-1, 7):
        idx = torch.tensor([0, bad, 3], dtype=index_dtype)
        with pytest.raises(kiln.KilnError, match=rf"\(embedding\): index {bad} is out of range"):
            run_layer(lambda net, w, i: net.add_embedding(w, i), [weight, idx], "cpu")


def test_embedding_with_a_known_negative_index_is_refused_at_build_time():
    net = kiln.Network()
    w = net.add_input("w", "float32", (6, 3))
    with pytest.raises(kiln.KilnError, match=r"layer 'e' \(embedding\): index -1 is out of range"):
        net.add_embedding(w, net.add_constant(torch.tensor([2, -1])), name="e")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64]
)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_cuda_embedding_writes_nan_rows_for_out_of_range_indices(dtype, index_dtype):
    weight = (torch.randn(11, 33) * 5).to(dtype)
    big = 2**30 if index_dtype == torch.int32 else 2**40
    idx = torch.tensor([[3, -1, 10], [11, 0, -big], [big, 7, -11]], dtype=index_dtype)
    valid = (idx >= 0) & (idx < 11)
    got = run_layer(lambda net, w, i: net.add_embedding(w, i), [weight, idx], "cuda")
    want = torch.nn.functional.embedding(idx.clamp(0, 10).long(), weight)
    assert torch.equal(got[valid], want[valid])  # valid rows exact
    bad = got[~valid]
    if dtype.is_floating_point:
        assert bool(bad.float().isnan().all()), bad
    else:
        assert bool((bad == 0).all()), bad


# ---- gather (index_select / numpy.take) and gather_elements (torch.gather) -----------------------


@pytest.mark.parametrize("target", DEVICES)
def test_gather_wraps_by_default_and_not_with_wrap_0(target):
    x = torch.randn(4, 6)
    idx = torch.tensor([0, -1, 5, -6])
    got = run_layer(lambda net, d, i: net.add_gather(d, i, 1), [x, idx], target)
    assert torch.equal(got, x[:, idx])  # torch's advanced indexing wraps the same way
    inside = torch.tensor([0, 5, 2])
    got = run_layer(
        lambda net, d, i: net.add_layer("gather", [d, i], {"axis": 1, "wrap": 0}),
        [x, inside],
        target,
    )
    assert torch.equal(got, torch.index_select(x, 1, inside))


@pytest.mark.parametrize("bad", [-1, 6])
def test_gather_without_wrap_refuses_negative_indices_on_the_reference_backend(bad):
    x, idx = torch.randn(4, 6), torch.tensor([0, bad])
    with pytest.raises((IndexError, RuntimeError)):  # torch's message and type vary by case
        torch.index_select(x, 1, idx)
    with pytest.raises(kiln.KilnError, match=rf"layer 'g' \(gather\): index {bad} is out of range"):
        run_layer(
            lambda net, d, i: net.add_layer("gather", [d, i], {"axis": 1, "wrap": 0}, name="g"),
            [x, idx],
            "cpu",
        )


def test_gather_without_wrap_refuses_a_known_negative_index_at_build_time():
    net = kiln.Network()
    x = net.add_input("x", "float32", (3, 4))
    with pytest.raises(kiln.KilnError, match=r"layer 'g' \(gather\): index -1 is out of range"):
        net.add_layer(
            "gather", [x, net.add_constant(torch.tensor([-1]))], {"axis": 1, "wrap": 0}, name="g"
        )


@needs_runtime
def test_compiled_torch_gather_raises_for_a_negative_index():
    class Gather(nn.Module):
        def forward(self, x, i):
            return torch.gather(x, 1, i)

    x = torch.randn(3, 5)
    compiled = compile_cpu(Gather(), [x, torch.zeros(3, 2, dtype=torch.int64)])
    ok = torch.tensor([[0, 4], [1, 1], [3, 2]])
    assert torch.equal(compiled(x, ok), torch.gather(x, 1, ok))
    bad = torch.tensor([[0, -1], [1, 1], [3, 2]])
    with pytest.raises(RuntimeError, match="out of bounds"):
        torch.gather(x, 1, bad)
    with pytest.raises(RuntimeError, match=r"\(gather_elements\): index -1 is out of range"):
        compiled(x, bad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32])
def test_cuda_gather_and_gather_elements_write_nan_for_out_of_range_indices(dtype):
    x = (torch.randn(4, 6) * 5).to(dtype)
    fill_ok = (
        (lambda t: t.float().isnan().all())
        if dtype.is_floating_point
        else (lambda t: (t == 0).all())
    )
    # gather, wrapping: -6..5 valid, 6 and -7 not
    idx = torch.tensor([0, -1, 6, -7, 2**40])
    got = run_layer(lambda net, d, i: net.add_gather(d, i, 1), [x, idx], "cuda")
    assert torch.equal(got[:, :2], x[:, [0, 5]]) and bool(fill_ok(got[:, 2:]))
    # gather without wrap: -1 is out of range too
    got = run_layer(
        lambda net, d, i: net.add_layer("gather", [d, i], {"axis": 1, "wrap": 0}), [x, idx], "cuda"
    )
    assert torch.equal(got[:, :1], x[:, [0]]) and bool(fill_ok(got[:, 1:]))
    # gather_elements without wrap (torch.gather)
    index = torch.tensor([[0, 5], [-1, 2], [6, 1], [3, -(2**40)]])
    got = run_layer(
        lambda net, d, i: net.add_layer("gather_elements", [d, i], {"axis": 1, "wrap": 0}),
        [x, index],
        "cuda",
    )
    valid = (index >= 0) & (index < 6)
    assert torch.equal(got[valid], torch.gather(x, 1, index.clamp(0, 5))[valid])
    assert bool(fill_ok(got[~valid]))


# ---- advanced indexing (aten.index.Tensor) ------------------------------------------------------


class Index(nn.Module):
    def forward(self, x, i, j):
        return x[i], x[i, j]


@needs_runtime
def test_compiled_advanced_indexing_wraps_negative_indices_like_torch():
    x = torch.randn(5, 3)
    model = Index()
    compiled = compile_cpu(model, [x, torch.tensor([0, 1]), torch.tensor([1, 2])])
    for i, j in (([-1, -5], [0, -3]), ([4, -2], [-1, 2]), ([0, 0], [-3, -3])):
        i, j = torch.tensor(i), torch.tensor(j)
        for got, want in zip(compiled(x, i, j), model(x, i, j), strict=True):
            assert torch.equal(got, want)


@needs_runtime
@pytest.mark.parametrize(
    "i, j",
    [
        ([-6, 0], [0, 0]),  # below -n: raised, not wrapped twice to the last row
        ([5, 0], [0, 0]),
        ([0, 0], [3, 0]),  # j = 3 would land on x[1, 0] in the flattened tensor
        ([1, 0], [-4, 0]),  # j = -4 -> -1 would land on x[0, 2]
    ],
)
def test_compiled_advanced_indexing_raises_for_an_index_out_of_range(i, j):
    x = torch.randn(5, 3)
    model = Index()
    compiled = compile_cpu(model, [x, torch.tensor([0, 1]), torch.tensor([1, 2])])
    i, j = torch.tensor(i), torch.tensor(j)
    with pytest.raises(IndexError):
        model(x, i, j)
    with pytest.raises(RuntimeError, match=r"\(gather\): index -?\d+ is out of range"):
        compiled(x, i, j)


@pytest.mark.gpu
@needs_runtime
def test_cuda_advanced_indexing_gives_nan_for_an_index_out_of_range():
    x = torch.randn(5, 3, device="cuda")
    model = Index()
    compiled = kiln.compile(
        model,
        [x, torch.tensor([0, 1], device="cuda"), torch.tensor([1, 2], device="cuda")],
        device="cuda",
        min_block_size=1,
        require_full_compilation=True,
    )
    i, j = torch.tensor([-1, 6], device="cuda"), torch.tensor([3, -1], device="cuda")
    rows, elems = compiled(x, i, j)
    assert torch.equal(rows[0], x[-1]) and bool(rows[1].isnan().all())
    assert bool(elems.isnan().all())  # (-1, 3): j out of range; (6, -1): i out of range


def test_plan_with_a_gather_that_does_not_wrap_round_trips():
    # wrap is a schema attribute: it survives serialization and reaches the kernel.
    net = kiln.Network()
    x = net.add_input("x", "float32", (3, 4))
    i = net.add_input("i", "int64", (2,))
    net.mark_output(net.add_layer("gather", [x, i], {"axis": 1, "wrap": 0}, name="g"), "y")
    plan = kiln.Plan.deserialize(build_plan(net, "cpu").serialize())
    (layer,) = [lay for lay in plan.layers() if lay["op"] == "gather"]
    assert layer["attrs"]["wrap"] == 0
    x_val = torch.randn(3, 4)
    assert torch.equal(
        run_plan(plan, {"x": x_val, "i": torch.tensor([3, 0])})["y"], x_val[:, [3, 0]]
    )
    with pytest.raises(kiln.KilnError, match=r"layer 'g' \(gather\): index -1 is out of range"):
        run_plan(plan, {"x": x_val, "i": torch.tensor([-1, 0])})
