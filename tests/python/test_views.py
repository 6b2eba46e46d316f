"""Views: the builder turns reshape/flatten/squeeze/unsqueeze into aliases of their input (no
kernel, no memory of their own; alias_views in core/passes). The source must stay intact while
a view is still read, on the reference backend (CPU, CI) and on CUDA."""

import pytest
import torch
from layer_util import DEVICES, build_plan, device_of, run_plan

import kiln

ALIAS = "alias (no copy)"


def _network() -> kiln.Network:
    """a = relu(x) is read through four views only at the very end, after b, c, d were computed:
    if a view did not keep its source live, the planner would give a's bytes to b, c or d."""
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, 6, 8))
    a = net.add_activation(x, "relu", name="a").outputs[0]
    v = net.add_reshape(a, (-1, 48), name="v1").outputs[0]
    v = net.add_unsqueeze(v, [1], name="v2").outputs[0]
    v = net.add_squeeze(v, [1], name="v3").outputs[0]
    b = net.add_activation(x, "tanh", name="b").outputs[0]
    c = net.add_activation(b, "sigmoid", name="c").outputs[0]
    d = net.add_flatten(c, 1, -1, name="v4").outputs[0]  # [-1, 48]
    d = net.add_activation(d, "relu", name="d").outputs[0]
    y = net.add_elementwise(v, d, "mul", name="y").outputs[0]
    net.mark_output(y, "y")
    net.mark_output(net.add_reshape(y, (-1, 6, 8), name="out_view").outputs[0], "y3")
    return net


def _expected(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).reshape(-1, 48) * torch.relu(torch.sigmoid(torch.tanh(x))).reshape(-1, 48)


@pytest.mark.parametrize("target", DEVICES)
def test_views_alias_their_input_and_keep_it_live(target):
    plan = build_plan(_network(), target, profile={"x": ((1, 6, 8), (3, 6, 8), (5, 6, 8))})
    info = kiln.inspect(plan)
    kernels = {la.name: la.kernel for la in info.layers}
    assert all(kernels[n] == ALIAS for n in ("v1", "v2", "v3")), kernels
    assert kernels["out_view"] != ALIAS  # writes a network output: stays a copy
    ctx = kiln.Engine(plan, device=target).create_execution_context()
    device = device_of(target)
    for batch in (1, 5, 3):
        x = torch.randn(batch, 6, 8)
        out = ctx.execute({"x": x.to(device)})
        want = _expected(x)
        torch.testing.assert_close(torch.as_tensor(out["y"]).cpu(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            torch.as_tensor(out["y3"]).cpu(), want.reshape(-1, 6, 8), rtol=1e-5, atol=1e-6
        )


def test_views_take_no_arena_memory():
    config = kiln.BuilderConfig()
    config.add_optimization_profile({"x": ((1, 6, 8), (3, 6, 8), (5, 6, 8))})
    info = kiln.inspect(kiln.Builder().build(_network(), config))
    in_arena = {name for name, _, _ in info.memory.tensors}
    views = [la for la in info.layers if la.kernel == ALIAS]
    assert len(views) >= 3
    for la in views:
        assert la.outputs[0][0] not in in_arena, la.name
    assert "a" in in_arena  # the views' source has the memory


def check_view_of_a_live_source(target, shape, view, name, aliased, want_fn):
    """y = view(relu(x)) + view(tanh(x)): the tanh branch is computed while relu(x) is still read
    through the view `name`, which must (or must not) be an alias; y matches want_fn(x)."""
    net = kiln.Network()
    x = net.add_input("x", "float32", shape)
    a = net.add_activation(x, "relu", name="a").outputs[0]
    s = view(net, a, name)
    b = net.add_activation(x, "tanh", name="b").outputs[
        0
    ]  # computed while the view's source is live
    b = view(net, b, name + "_b")
    net.mark_output(net.add_elementwise(s, b, "add", name="y").outputs[0], "y")
    plan = build_plan(net, target)
    kernels = {la.name: la.kernel for la in kiln.inspect(plan).layers}
    assert (kernels[name] == ALIAS) == aliased, kernels
    xv = torch.randn(shape)
    out = run_plan(plan, {"x": xv}, target)
    torch.testing.assert_close(out["y"], want_fn(xv), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "shape,axis,index,aliased",
    [
        ((3, 4, 16), 0, 1, True),  # select(0, 1) of [3, S, E]: q/k/v of torch's MultiheadAttention
        ((3, 4, 16), 0, -1, True),
        ((1, 3, 64), 1, 2, True),  # size-1 dims before the axis still give one slab
        ((3, 4, 8), 0, 1, False),  # 128-byte offset: not 256-aligned, stays a copy
        ((4, 3, 16), 1, 1, False),  # strided: a real gather
    ],
)
def test_gather_of_a_leading_slab_is_a_view(target, shape, axis, index, aliased):
    def select(net, t, name):
        idx = net.add_constant(torch.tensor(index, dtype=torch.int64))
        return net.add_gather(t, idx, axis, name=name).outputs[0]

    check_view_of_a_live_source(
        target,
        shape,
        select,
        "select",
        aliased,
        lambda x: torch.relu(x).select(axis, index) + torch.tanh(x).select(axis, index),
    )


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "shape,perm,aliased",
    [
        ((1, 5, 16), (1, 0, 2), True),  # [1, S, E] -> [S, 1, E]: sequence-first at B=1
        ((4, 1, 1, 8), (0, 2, 3, 1), True),  # NCHW -> NHWC of a 1x1 map
        ((2, 5, 16), (1, 0, 2), False),  # a real transpose
        ((1, 5, 16), (0, 2, 1), False),
    ],
)
def test_transpose_of_size_one_dims_is_a_view(target, shape, perm, aliased):
    def transpose(net, t, name):
        return net.add_layer("transpose", [t], {"perm": list(perm)}, name).outputs[0]

    check_view_of_a_live_source(
        target,
        shape,
        transpose,
        "t",
        aliased,
        lambda x: (torch.relu(x) + torch.tanh(x)).permute(*perm),
    )


class _PatchMerging(torch.nn.Module):
    """torchvision Swin's patch merging without its norm and reduction: four strided slices of
    [B, H, W, C] concatenated on C (a space-to-depth)."""

    def forward(self, x):
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return torch.relu(torch.cat(parts, -1))


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (2, 4, 6, 5)])
def test_concat_of_strided_slices_is_one_transpose(target, shape):
    # concat_views_to_transposes: six slices and a concat become reshape, transpose, reshape.
    x = torch.randn(*shape)
    compiled = kiln.compile(_PatchMerging(), [x.to(target)], device=target)
    (plan,) = kiln.plans(compiled)
    ops = [layer["op"] for layer in plan.layers()]
    assert "slice" not in ops and "concat" not in ops and ops.count("transpose") == 1, ops
    torch.testing.assert_close(compiled(x.to(target)).cpu(), _PatchMerging()(x), rtol=0, atol=0)
