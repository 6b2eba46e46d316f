"""Builder passes of the convolution path: fold_batch_norm, fuse_conv_epilogue, assign_layouts.

Structure: the built plan's layers (Plan.layers()) show what was folded, fused and reformatted,
with a no-change case for each rule. Numbers: the optimized plan computes what the unoptimized
plan (optimization_level 0: no canonicalization, fusion or layouts) computes, on the reference
backend, and on the GPU against eager torch. A whole resnet50 through kiln.compile matches eager.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from layer_util import DEVICES, build_plan, run_plan

import kiln

# Folded weights are rounded once to float32 where the unfolded plan rounds the conv output and
# the batch-norm result: a few float32 ulp of O(1) values.
FOLD_TOL = {"rtol": 1e-5, "atol": 2e-6}


def ops(plan):
    return [layer["op"] for layer in plan.layers()]


def transpose_copies(plan):
    """Names of the transposes that copy (not views)."""
    return [
        layer["name"]
        for layer in plan.layers()
        if layer["op"] == "transpose" and not layer["attrs"].get("alias")
    ]


def layer_named(plan, name):
    return next(layer for layer in plan.layers() if layer["name"] == name)


def bn_params(c):
    return [torch.rand(c) + 0.5, torch.randn(c), torch.randn(c) * 0.1, torch.rand(c) + 0.5]


def conv_weight(k, c, kh=3, kw=3):
    return torch.randn(k, c, kh, kw) / math.sqrt(c * kh * kw)


# ---- fold_batch_norm ----------------------------------------------------------------------------


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_batch_norm_into_convolution(conv_bias):
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 3, 8, 7])
    b = torch.randn(5) if conv_bias else None
    c = net.add_convolution(x, conv_weight(5, 3), b, padding=1, name="conv")
    y = net.add_batch_norm(c, *bn_params(5), eps=1e-3, name="bn")
    net.mark_output(y, "y")
    folded, plain = build_plan(net), build_plan(net, level=0)
    assert ops(folded) == ["convolution"]
    assert ops(plain) == ["convolution", "batch_norm"]
    conv = layer_named(folded, "conv")
    assert conv["attrs"]["fused"] == "conv,bn"
    assert len(conv["inputs"]) == 3  # the folded bias
    feed = {"x": torch.randn(2, 3, 8, 7)}
    torch.testing.assert_close(run_plan(folded, feed)["y"], run_plan(plain, feed)["y"], **FOLD_TOL)


def test_fold_batch_norm_into_grouped_deconvolution_and_fully_connected():
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 4, 5, 5])
    d = net.add_deconvolution(
        x, torch.randn(4, 3, 3, 3) / 3, torch.randn(6), stride=2, groups=2, name="deconv"
    )
    d = net.add_batch_norm(d, *bn_params(6), name="bn_d")
    f = net.add_flatten(d, 1)
    f = net.add_fully_connected(f, torch.randn(7, 6 * 11 * 11) / 26, name="fc")
    net.mark_output(net.add_batch_norm(f, *bn_params(7), name="bn_f"), "y")
    folded, plain = build_plan(net), build_plan(net, level=0)
    assert "batch_norm" not in ops(folded)
    assert layer_named(folded, "deconv")["attrs"]["fused"] == "deconv,bn_d"
    assert layer_named(folded, "fc")["attrs"]["fused"] == "fc,bn_f"
    feed = {"x": torch.randn(2, 4, 5, 5)}
    torch.testing.assert_close(run_plan(folded, feed)["y"], run_plan(plain, feed)["y"], **FOLD_TOL)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("relu", [True, False])
def test_float16_fold_takes_the_weights_rounding_off_the_bias(relu, groups):
    # A float16 convolution folds the batch norm after it into float16 weights w * s, each one
    # rounded. Where its input comes from a batch norm (through a relu or not), the input's mean
    # per channel is known (beta; that of relu(N(beta, gamma^2))), and what the rounding adds to
    # each output channel on average comes off the bias. Measured against exact arithmetic on the
    # same float16 parameters: without the correction the per-channel mean error is that average
    # itself (slope 1 against it), with it the rest is noise (slope near 0).
    torch.manual_seed(0)
    c = k = 64
    act = torch.nn.ReLU() if relu else torch.nn.Identity()
    # bn0 passes its scale and shift exactly in float16 (var + eps = 1 to within 2^-24).
    model = torch.nn.Sequential(
        torch.nn.BatchNorm2d(c, eps=2.0**-24),
        act,
        torch.nn.Conv2d(c, k, 3, groups=groups, bias=False),
        torch.nn.BatchNorm2d(k),
    ).eval()
    bn0, conv, bn1 = model[0], model[2], model[3]
    with torch.no_grad():
        bn0.weight.uniform_(0.5, 1.5)
        bn0.bias.uniform_(-0.5, 1.0)
        conv.weight.normal_(0, 1)
        bn1.running_var.uniform_(0.5, 2)
        bn1.weight.uniform_(0.5, 2)
        bn1.running_mean.zero_()  # a bias of 0 after the fold, whose own rounding is nothing
        bn1.bias.zero_()
    model = model.half()
    p = {n: v.double() for n, v in model.state_dict().items() if v.is_floating_point()}
    x = torch.randn(16, c, 24, 24).half()
    y = F.batch_norm(
        x.double(),
        p["0.running_mean"],
        p["0.running_var"],
        p["0.weight"],
        p["0.bias"],
        False,
        0.0,
        bn0.eps,
    )
    y = y.relu() if relu else y
    want = F.batch_norm(
        F.conv2d(y, p["2.weight"], None, 1, 0, 1, groups),
        p["3.running_mean"],
        p["3.running_var"],
        p["3.weight"],
        p["3.bias"],
        False,
        0.0,
        bn1.eps,
    )
    compiled = kiln.compile(
        model,
        [x],
        enabled_precisions={torch.float16},
        device="cpu",
        min_block_size=1,
        cache_dir=False,
    )
    err = (compiled(x).double() - want).mean((0, 2, 3))
    # What the weights' rounding adds on average over this input: the correction's target.
    s = p["3.weight"] / torch.sqrt(p["3.running_var"] + bn1.eps)
    exact = p["2.weight"] * s[:, None, None, None]
    delta = exact.half().double() - exact
    mean_in = y.mean((0, 2, 3)).view(groups, c // groups).repeat_interleave(k // groups, 0)
    drift = (delta.sum((2, 3)) * mean_in).sum(1)
    slope = (err @ drift / (drift @ drift)).item()
    assert abs(slope) < 0.2, f"per-channel mean error against the rounding's: slope {slope:.3f}"
    assert err.abs().mean() < 0.5 * drift.abs().mean()


def test_float16_fold_correction_follows_a_refit():
    # The corrected bias derives from the convolution's weight and the batch norms before and
    # after it: a refit that changes them gives what a fresh compile with the new values gives.
    def model_with(seed):
        torch.manual_seed(seed)
        m = torch.nn.Sequential(
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, groups=2, bias=False),
            torch.nn.BatchNorm2d(16),
        ).eval()
        with torch.no_grad():
            for bn in (m[0], m[3]):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 1.0)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
        return m.half()

    x = torch.randn(4, 16, 12, 12).half()
    options = dict(
        enabled_precisions={torch.float16}, device="cpu", min_block_size=1, cache_dir=False
    )
    compiled = kiln.compile(model_with(1), [x], **options)
    fresh = kiln.compile(model_with(2), [x], **options)
    kiln.refit(compiled, model_with(2))
    assert torch.equal(compiled(x), fresh(x))


def test_fold_batch_norm_leaves_shared_or_runtime_inputs():
    # No change: the conv output is also a network output, and a batch norm whose statistics are
    # network inputs (not constants) cannot be folded.
    net = kiln.Network()
    x = net.add_input("x", "float32", [1, 2, 5, 5])
    c = net.add_convolution(x, conv_weight(3, 2), padding=1, name="conv")
    net.mark_output(c, "c")
    net.mark_output(net.add_batch_norm(c, *bn_params(3), name="bn"), "y")
    mean = net.add_input("mean", "float32", [3])
    c2 = net.add_convolution(x, conv_weight(3, 2), name="conv2")
    p = bn_params(3)
    net.mark_output(net.add_batch_norm(c2, p[0], p[1], mean, p[3], name="bn2"), "y2")
    plan = build_plan(net)
    # Neither folds into its conv: the first becomes a scale and shift (constant statistics), the
    # second stays a batch_norm.
    assert ops(plan) == ["convolution", "fused_pointwise", "convolution", "batch_norm"]
    assert "fused" not in layer_named(plan, "conv")["attrs"]


# ---- fuse_conv_epilogue -------------------------------------------------------------------------


def bottleneck_net(n=-1, c=8, hw=6, dtype="float32"):
    """A resnet bottleneck with a downsample branch: conv-bn-relu, conv-bn, and a residual add
    whose other operand (the downsample conv) comes later in layer order, then relu."""
    net = kiln.Network()
    x = net.add_input("x", dtype, [n, c, hw, hw])
    a = net.add_convolution(x, conv_weight(c, c), padding=1, name="conv1")
    a = net.add_batch_norm(a, *bn_params(c), name="bn1")
    a = net.add_activation(a, "relu", name="relu1")
    a = net.add_convolution(a, conv_weight(2 * c, c), stride=2, padding=1, name="conv2")
    a = net.add_batch_norm(a, *bn_params(2 * c), name="bn2")
    d = net.add_convolution(x, conv_weight(2 * c, c, 1, 1), stride=2, name="down")
    d = net.add_batch_norm(d, *bn_params(2 * c), name="bn_down")
    s = net.add_elementwise(a, d, "add", name="add")
    net.mark_output(net.add_activation(s, "relu", name="relu2"), "y")
    return net


def test_fuse_bottleneck_into_three_convolutions():
    net = bottleneck_net()
    profile = {"x": ([1, 8, 6, 6], [2, 8, 6, 6], [3, 8, 6, 6])}
    fused, plain = build_plan(net, profile=profile), build_plan(net, level=0, profile=profile)
    assert ops(fused) == ["convolution"] * 3
    conv1, conv2 = layer_named(fused, "conv1"), layer_named(fused, "conv2")
    assert conv1["attrs"]["activation"] == "relu" and conv1["attrs"]["fused"] == "conv1,bn1,relu1"
    # conv2 absorbed the add, so it now comes after the downsample conv that computes its residual.
    assert [layer["name"] for layer in fused.layers()] == ["conv1", "down", "conv2"]
    assert conv2["attrs"]["residual"] == 1 and conv2["attrs"]["activation"] == "relu"
    assert conv2["attrs"]["fused"] == "conv2,bn2,add,relu2"
    for batch in (1, 3):  # dynamic batch
        feed = {"x": torch.randn(batch, 8, 6, 6)}
        torch.testing.assert_close(
            run_plan(fused, feed)["y"], run_plan(plain, feed)["y"], **FOLD_TOL
        )


@pytest.mark.parametrize("activation", ["silu", "hardswish", "sigmoid", "leaky_relu"])
def test_fuse_activation_keeps_its_parameters(activation):
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 3, 5, 5])
    c = net.add_convolution(x, conv_weight(4, 3), torch.randn(4), padding=1, name="conv")
    net.mark_output(net.add_activation(c, activation, alpha=0.3, name="act"), "y")
    fused, plain = build_plan(net), build_plan(net, level=0)
    assert ops(fused) == ["convolution"]
    attrs = layer_named(fused, "conv")["attrs"]
    assert attrs["activation"] == activation and attrs["activation_alpha"] == pytest.approx(0.3)
    feed = {"x": torch.randn(2, 3, 5, 5)}
    torch.testing.assert_close(run_plan(fused, feed)["y"], run_plan(plain, feed)["y"], **FOLD_TOL)


def test_fuse_conv_epilogue_no_change_cases():
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 3, 5, 5])
    # 1. the conv output is also a network output: the activation stays.
    c1 = net.add_convolution(x, conv_weight(3, 3), padding=1, name="conv_out")
    net.mark_output(c1, "c1")
    net.mark_output(net.add_activation(c1, "relu", name="relu_kept"), "y1")
    # 2. the add broadcasts its other operand: no residual.
    c2 = net.add_convolution(x, conv_weight(3, 3), padding=1, name="conv_bcast")
    net.mark_output(net.add_elementwise(c2, torch.randn(1, 3, 1, 1), "add", name="add_bcast"), "y2")
    # 3. relu before the add: the add would come after the activation, so only relu fuses.
    c3 = net.add_convolution(x, conv_weight(3, 3), padding=1, name="conv_relu_add")
    r3 = net.add_activation(c3, "relu", name="relu3")
    net.mark_output(net.add_elementwise(r3, x, "add", name="add3"), "y3")
    # 4. two consumers of the conv output.
    c4 = net.add_convolution(x, conv_weight(3, 3), padding=1, name="conv_two")
    net.mark_output(net.add_activation(c4, "tanh", name="tanh4"), "y4")
    net.mark_output(net.add_activation(c4, "sigmoid", name="sig4"), "y5")
    plan = build_plan(net)
    names = [layer["name"] for layer in plan.layers()]
    for kept in ["relu_kept", "add_bcast", "add3", "tanh4", "sig4"]:
        assert kept in names
    assert "relu3" not in names
    assert layer_named(plan, "conv_relu_add")["attrs"]["fused"] == "conv_relu_add,relu3"
    feed = {"x": torch.randn(2, 3, 5, 5)}
    got, want = run_plan(plan, feed), run_plan(build_plan(net, level=0), feed)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **FOLD_TOL)


# ---- assign_layouts -----------------------------------------------------------------------------


def test_layouts_keep_fp16_conv_chain_channels_last():
    # conv-relu-maxpool-conv, an SE-like gate (global pool, 1x1 conv, sigmoid, broadcast mul),
    # conv, global avg pool, then flatten + fc: everything up to the pool runs channels last, with
    # one transpose in (after the cast to float16) and one out (before flatten, a view: the pooled
    # image is 1x1).
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 4, 9, 9])
    a = net.add_convolution(x, conv_weight(8, 4), torch.randn(8), padding=1, name="c1")
    a = net.add_activation(a, "relu", name="r1")
    a = net.add_pooling(a, "max", 3, 2, 1, name="maxpool")
    b = net.add_convolution(a, conv_weight(8, 8), torch.randn(8), padding=1, name="c2")
    s = net.add_adaptive_pooling(b, "avg", 1, name="se_pool")
    gate = net.add_convolution(s, conv_weight(8, 8, 1, 1), torch.randn(8), name="c_gate")
    gate = net.add_activation(gate, "sigmoid", name="gate")
    b = net.add_elementwise(b, gate, "mul", name="mul")
    c = net.add_convolution(b, conv_weight(3, 8), padding=1, name="c3")
    c = net.add_adaptive_pooling(c, "avg", 1, name="gap")
    f = net.add_flatten(c, 1)
    net.mark_output(net.add_fully_connected(f, torch.randn(5, 3), name="fc"), "y")
    profile = {"x": ([1, 4, 9, 9], [2, 4, 9, 9], [3, 4, 9, 9])}
    plan = build_plan(net, precisions=["fp32", "fp16"], profile=profile)
    for name in ["c1", "maxpool", "c2", "se_pool", "c3", "gap"]:
        assert layer_named(plan, name)["attrs"]["layout"] == "nhwc", name
    # The gate's 1x1 convolution of a 1x1 image is a GEMM (patchify_convolutions); its unit-dim
    # transposes are views.
    assert ops(plan).count("fully_connected") == 2
    # One transpose copies (in, after the cast to float16); the others move only unit dims (the
    # pooled [N, 1, 1, C] tensors) and are views.
    transposes = [layer for layer in plan.layers() if layer["op"] == "transpose"]
    assert [t["name"] for t in transposes if not t["attrs"].get("alias")] == [
        "x/to_float16/to_nhwc"
    ]
    assert "gap/to_nchw" in [t["name"] for t in transposes]
    assert layer_named(plan, "mul")["outputs"][0][2] == [-1, 5, 5, 8]
    plain = build_plan(net, level=0, precisions=["fp32", "fp16"], profile=profile)
    assert "transpose" not in ops(plain)
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, 4, 9, 9)}
        # Both compute in float16 with rounding at different points (fused epilogues round once).
        torch.testing.assert_close(
            run_plan(plan, feed)["y"], run_plan(plain, feed)["y"], rtol=1e-2, atol=1e-2
        )


def test_layouts_renumber_squeeze_excitation_mean():
    # torchvision's SE blocks take mean(dims=[2, 3], keepdim=True): it stays channels last with
    # its axes renumbered; a mean without keepdim goes back to channels first.
    net = kiln.Network()
    x = net.add_input("x", "float16", [2, 6, 5, 7])
    b = net.add_convolution(x, conv_weight(6, 6).half(), padding=1, name="conv")
    s = net.add_layer("reduce", [b], {"op": "mean", "axes": [-1, 2], "keepdim": 1}, "se_mean")
    gate = net.add_activation(
        net.add_convolution(s, conv_weight(6, 6, 1, 1).half(), name="fc1"), "sigmoid"
    )
    y = net.add_elementwise(b, gate, "mul", name="scale")
    net.mark_output(net.add_layer("reduce", [y], {"op": "sum", "axes": [1]}, "flat_sum"), "y")
    plan = build_plan(net)
    se_mean = layer_named(plan, "se_mean")
    assert se_mean["attrs"]["axes"] == [2, 1] and se_mean["outputs"][0][2] == [2, 1, 1, 6]
    assert layer_named(plan, "flat_sum")["attrs"]["axes"] == [1]
    # Copies in and out; the gate (fc1 became a GEMM) moves only unit dims: views.
    transposes = [layer for layer in plan.layers() if layer["op"] == "transpose"]
    copies = [t["name"] for t in transposes if not t["attrs"].get("alias")]
    assert copies == ["x/to_nhwc", "scale/to_nchw"], copies
    feed = {"x": torch.randn(2, 6, 5, 7).half()}
    want = run_plan(build_plan(net, level=0), feed)["y"]
    torch.testing.assert_close(run_plan(plan, feed)["y"], want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("target", DEVICES)
def test_layouts_absorb_the_models_own_nhwc_permutes(target):
    # ConvNeXt's block: dwconv -> permute(0, 2, 3, 1) -> layer norm -> linear -> permute(0, 3, 1,
    # 2) -> residual add -> next dwconv. The conv already runs channels last, so the first permute
    # is a view of its output, and the second one's input is the add's channels-last operand: no
    # transpose copies inside the chain, and one back to NCHW before the output.
    net = kiln.Network()
    x = net.add_input("x", "float16", [-1, 8, 6, 6])
    a = net.add_convolution(x, conv_weight(8, 1, 7, 7).half(), padding=3, groups=8, name="dw1")
    t = net.add_layer("transpose", [a], {"perm": [0, 2, 3, 1]}, "permute")
    t = net.add_layer("layer_norm", [t], {"normalized_ndim": 1}, "ln")
    t = net.add_fully_connected(t, torch.randn(8, 8).half() * 0.3, name="fc")
    t = net.add_layer("transpose", [t], {"perm": [0, 3, 1, 2]}, "permute_back")
    b = net.add_elementwise(x, t, "add", name="residual")
    c = net.add_convolution(b, conv_weight(8, 1, 7, 7).half(), padding=3, groups=8, name="dw2")
    net.mark_output(c, "y")
    profile = {"x": ([1, 8, 6, 6], [2, 8, 6, 6], [3, 8, 6, 6])}
    plan = build_plan(net, target, profile=profile)
    assert layer_named(plan, "residual")["outputs"][0][2] == [-1, 6, 6, 8]
    assert transpose_copies(plan) == ["x/to_nhwc", "y/to_nchw"]
    plain = build_plan(net, target, level=0, profile=profile)
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, 8, 6, 6).half()}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"],
            run_plan(plain, feed, target)["y"],
            rtol=1e-2,
            atol=1e-2,
        )


@pytest.mark.parametrize("target", DEVICES)
def test_dense_block_runs_channels_last_without_transposes(target):
    # DenseNet's layer: concat(features) -> batch norm -> relu -> 1x1 conv (+ folded bn, relu) ->
    # 3x3 conv, whose output joins the next concat. The batch norm after the concat has no
    # producer to fold into: it becomes a scale and shift (fused with the relu), and the concats
    # renumber their axis to run channels last, so the only transposes are in and out.
    net = kiln.Network()
    x = net.add_input("x", "float16", [-1, 8, 6, 6])
    feats = [net.add_convolution(x, conv_weight(8, 8).half(), padding=1, name="stem")]
    for i in range(3):
        c = 8 + 4 * i  # channels so far
        cat = net.add_concat(feats, 1, name=f"cat{i}") if len(feats) > 1 else feats[0]
        a = net.add_batch_norm(cat, *[p.half() for p in bn_params(c)], name=f"norm{i}")
        a = net.add_activation(a, "relu", name=f"relu{i}")
        a = net.add_convolution(a, conv_weight(8, c, 1, 1).half(), name=f"conv{i}a")
        a = net.add_batch_norm(a, *[p.half() for p in bn_params(8)], name=f"norm{i}b")
        a = net.add_activation(a, "relu", name=f"relu{i}b")
        feats.append(net.add_convolution(a, conv_weight(4, 8).half(), padding=1, name=f"conv{i}b"))
    net.mark_output(net.add_concat(feats, 1, name="out"), "y")
    profile = {"x": ([1, 8, 6, 6], [2, 8, 6, 6], [3, 8, 6, 6])}
    plan = build_plan(net, target, profile=profile)
    assert "batch_norm" not in ops(plan)
    for name in ("cat1", "cat2", "out"):
        assert layer_named(plan, name)["attrs"]["axis"] == 3, name
    assert transpose_copies(plan) == ["x/to_nhwc", "y/to_nchw"]
    plain = build_plan(net, target, level=0, profile=profile)
    assert ops(plain).count("batch_norm") == 6
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, 8, 6, 6).half()}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"],
            run_plan(plain, feed, target)["y"],
            rtol=2e-2,
            atol=2e-2,
        )


def test_unfoldable_batch_norm_becomes_scale_and_shift():
    # A batch norm after an activation (no producer to fold into), float32 and rank 2 (BatchNorm1d
    # in an MLP): one fused kernel with the activation after it, within float32 rounding.
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 6])
    a = net.add_activation(x, "tanh", name="act")
    a = net.add_batch_norm(a, *bn_params(6), eps=1e-3, name="bn")
    net.mark_output(net.add_activation(a, "relu", name="relu"), "y")
    profile = {"x": ([1, 6], [4, 6], [9, 6])}
    plan, plain = build_plan(net, profile=profile), build_plan(net, level=0, profile=profile)
    assert ops(plan) == ["fused_pointwise"]
    assert ops(plain) == ["activation", "batch_norm", "activation"]
    feed = {"x": torch.randn(5, 6)}
    torch.testing.assert_close(run_plan(plan, feed)["y"], run_plan(plain, feed)["y"], **FOLD_TOL)


def test_layouts_leave_float32_convolutions_alone():
    net = bottleneck_net(n=2)
    plan = build_plan(net)
    assert "transpose" not in ops(plan)
    assert all(layer["attrs"].get("layout", "nchw") == "nchw" for layer in plan.layers())


# ---- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precisions", [["fp32"], ["fp32", "fp16"]])
def test_fused_bottleneck_cuda_matches_reference(precisions):
    torch.backends.cudnn.allow_tf32 = False
    net = bottleneck_net(c=13, hw=9)  # odd channel counts
    profile = {"x": ([1, 13, 9, 9], [2, 13, 9, 9], [4, 13, 9, 9])}
    gpu = build_plan(net, precisions=precisions, profile=profile, target="cuda")
    ref = build_plan(net, level=0, profile=profile)
    if "fp16" in precisions:
        assert any(layer["attrs"].get("layout") == "nhwc" for layer in gpu.layers())
    tol = {"rtol": 1e-4, "atol": 1e-4} if precisions == ["fp32"] else {"rtol": 2e-2, "atol": 2e-2}
    for batch in (1, 4):
        feed = {"x": torch.randn(batch, 13, 9, 9)}
        torch.testing.assert_close(
            run_plan(gpu, feed, "cuda")["y"], run_plan(ref, feed)["y"], **tol
        )


# ---- whole model --------------------------------------------------------------------------------


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_resnet50_reference_matches_eager():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        want = model(x)
    compiled = kiln.compile(model, inputs=[x], device="cpu")
    got = compiled(x)
    # BN folded into 53 convolutions: float32 rounding of the folded weights only.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    half = kiln.compile(model, inputs=[x], device="cpu", enabled_precisions={torch.float16})
    # float16 activations through 50 layers: cosine similarity is the meaningful measure.
    assert cosine(half(x).float(), want) > 0.999


def fp16_reference_module(name: str):
    """torchvision's `name` (calibrated, 64x64 inputs) compiled FP16 on the reference backend,
    checked against FP32 eager (cosine > 0.999)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = calibrated(getattr(torchvision.models, name)(weights=None), size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    half = kiln.compile(model, inputs=[x], device="cpu", enabled_precisions={torch.float16})
    assert cosine(half(x).float(), want) > 0.999
    return half


def test_mobilenet_v3_fp16_reference_matches_eager():
    # Squeeze-excitation means, hardswish/hardsigmoid epilogues and depthwise convs channels last.
    fp16_reference_module("mobilenet_v3_large")


def test_shufflenet_fp16_reference_matches_eager_with_no_transpose_per_shuffle():
    # The channel shuffle between an NHWC concat and an NCHW split: the layout pass's transposes
    # move above the split and compose with the shuffle's (collapse_transposes) into one transpose
    # per unit, which fold_channel_shuffles then folds into the unit's concat (a concat along a new
    # inner axis interleaves the channels itself).
    (plan,) = kiln.plans(fp16_reference_module("shufflenet_v2_x0_5"))
    moving = [
        la for la in plan.layers() if la["op"] == "transpose" and la["kernel"] != "alias (no copy)"
    ]
    # The input's NHWC transpose and one more at most: before, each shuffle cost three (44 in all
    # for shufflenet_v2_x1_0), then one (18).
    assert len(moving) <= 2, [la["name"] for la in moving]


def calibrated(model, size=224):
    """The eval-mode model with batch-norm statistics of one random batch: with torchvision's
    initial statistics (mean 0, var 1) the activations of mobilenet/efficientnet shrink to 1e-10,
    which float16 cannot hold; calibrated ones stay O(1), so float16 results are comparable."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size))
    return model.eval()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0"])
def test_vision_model_fp16_cuda_matches_eager(name):
    # The whole conv path on the GPU: folded BN, fused epilogues, channels-last chains, global
    # pooling, dynamic batch; cosine similarity against float32 eager.
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = calibrated(getattr(torchvision.models, name)(weights=None)).cuda()
    spec = kiln.Input(
        min_shape=(1, 3, 224, 224), opt_shape=(8, 3, 224, 224), max_shape=(16, 3, 224, 224)
    )
    compiled = kiln.compile(model, inputs=[spec], enabled_precisions={torch.float16})
    for batch in (1, 5):
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        with torch.no_grad():
            want = model(x)
        got = compiled(x).float()
        assert cosine(got, want) > 0.999


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("channels", [1, 3, 8])
def test_layouts_pad_few_input_channels(target, channels):
    # An image's 3 channels: the channels-last input is zero-padded to 8 channels (pad layer) and
    # the weight gets zero channels; 8 channels need no padding. Same values as the plain plan. (A
    # 3x3 stem: 5x5 and wider ones are folded 2x2 into 16 channels first, space_to_depth_stems.)
    net = kiln.Network()
    x = net.add_input("x", "float16", [-1, channels, 20, 19])
    a = net.add_convolution(
        x,
        conv_weight(16, channels, 3, 3).half(),
        torch.randn(16).half(),
        stride=2,
        padding=1,
        name="stem",
    )
    net.mark_output(net.add_activation(a, "relu", name="r"), "y")
    profile = {"x": ([1, channels, 20, 19], [2, channels, 20, 19], [3, channels, 20, 19])}
    plan = build_plan(net, profile=profile, target=target)
    pads = [layer for layer in plan.layers() if layer["op"] == "pad"]
    stem = layer_named(plan, "stem")
    assert stem["attrs"]["layout"] == "nhwc"
    if channels < 8:
        assert len(pads) == 1 and pads[0]["outputs"][0][2] == [-1, 20, 19, 8]
    else:
        assert not pads
    plain = build_plan(net, level=0, profile=profile)
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, channels, 20, 19).half()}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"].float(),
            run_plan(plain, feed)["y"].float(),
            rtol=1e-2,
            atol=1e-2,
        )


# ---- patchify_convolutions, collapse_transposes -------------------------------------------------


def patch_net(hw=(16, 12), k=4, bias=True, dtype="float32", batch=-1):
    net = kiln.Network()
    x = net.add_input("x", dtype, [batch, 3, *hw])
    w = conv_weight(8, 3, k, k)
    b = torch.randn(8) if bias else None
    if dtype == "float16":
        w, b = w.half(), (b.half() if bias else None)
    a = net.add_convolution(x, w, b, stride=k, name="patch")
    net.mark_output(net.add_activation(a, "relu", name="r"), "y")
    return net


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize("bias", [False, True])
def test_patchify_convolution_is_one_gemm(target, bias):
    # stride == kernel, no padding: the patches are disjoint, one GEMM computes the convolution.
    net = patch_net(bias=bias)
    profile = {"x": ([1, 3, 16, 12], [2, 3, 16, 12], [3, 3, 16, 12])}
    plan = build_plan(net, profile=profile, target=target)
    got_ops = ops(plan)
    assert "convolution" not in got_ops and got_ops.count("fully_connected") == 1, got_ops
    plain = build_plan(net, level=0, profile=profile)
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, 3, 16, 12)}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"], run_plan(plain, feed)["y"], **FOLD_TOL
        )


@pytest.mark.parametrize(
    "hw,k,stride,padding",
    [((14, 12), 4, 4, 0), ((16, 12), 4, 2, 0), ((16, 12), 4, 4, 1), ((16, 12), 1, 1, 0)],
)
def test_patchify_convolution_no_change_cases(hw, k, stride, padding):
    # A spatial size that is not a multiple of the kernel, overlapping windows, padding, 1x1.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 3, *hw])
    net.mark_output(
        net.add_convolution(x, conv_weight(8, 3, k, k), stride=stride, padding=padding), "y"
    )
    assert "convolution" in ops(build_plan(net))


# ---- space_to_depth_stems -----------------------------------------------------------------------


def stem_net(c=3, hw=(32, 32), k=7, padding=3, dtype="float32", batch=-1):
    """x [batch, c, *hw] -> convolution (k x k, stride 2) + batch norm + relu -> y."""
    net = kiln.Network()
    x = net.add_input("x", dtype, [batch, c, *hw])
    w = conv_weight(16, c, k, k)
    if dtype == "float16":
        w = w.half()
    a = net.add_convolution(x, w, stride=2, padding=padding, name="stem")
    bn = [p.half() for p in bn_params(16)] if dtype == "float16" else bn_params(16)
    a = net.add_batch_norm(a, *bn, eps=1e-5, name="bn")
    net.mark_output(net.add_activation(a, "relu", name="r"), "y")
    return net


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "c,hw,k,padding",
    [
        (3, (32, 32), 7, 3),  # ResNet's stem
        (3, (31, 30), 7, 3),  # odd rows: the fold pads one more row than the convolution did
        (1, (17, 20), 5, 2),  # one channel (grayscale), 5x5
        (4, (16, 16), 7, 0),  # no padding, 4 channels (no channel padding)
    ],
)
def test_space_to_depth_stem_is_a_stride_one_convolution(target, c, hw, k, padding):
    # A stride-2 stem over few channels runs as a stride-1 convolution over the input folded 2x2
    # into 16 channels, with ceil(k/2) taps; the same values up to summation order.
    net = stem_net(c, hw, k, padding)
    profile = {"x": ([1, c, *hw], [2, c, *hw], [3, c, *hw])}
    plan = build_plan(net, profile=profile, target=target)
    stem = layer_named(plan, "stem")
    assert stem["attrs"]["strides"] == [1, 1], stem["attrs"]
    assert (
        stem["inputs"][1][2][1:] == [16, (k + 1) // 2, (k + 1) // 2]
        or stem["inputs"][1][2][-1] == 16
    ), stem["inputs"]
    plain = build_plan(net, level=0, profile=profile)
    tol = FOLD_TOL if target == "cpu" else {"rtol": 1e-3, "atol": 1e-3}
    for batch in (1, 3):
        feed = {"x": torch.randn(batch, c, *hw)}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"], run_plan(plain, feed)["y"], **tol
        )


@pytest.mark.parametrize("target", DEVICES)
def test_space_to_depth_stem_half_folds_into_channels_last_in_one_layer(target):
    # FP16 runs the stem channels last: the fold writes the 16 channels last itself, no pad and no
    # transpose between the image and the convolution.
    net = stem_net(3, (32, 30), 7, 3, dtype="float16")
    profile = {"x": ([1, 3, 32, 30], [2, 3, 32, 30], [4, 3, 32, 30])}
    plan = build_plan(net, profile=profile, target=target)
    stem = layer_named(plan, "stem")
    fold = [la for la in plan.layers() if la["op"] == "space_to_depth"]
    assert len(fold) == 1 and fold[0]["attrs"]["layout"] == "nhwc", ops(plan)
    assert stem["inputs"][0][0] == fold[0]["outputs"][0][0], (stem, fold)
    assert "pad" not in ops(plan) and "transpose" not in ops(plan)[: ops(plan).index("convolution")]
    plain = build_plan(net, level=0, profile=profile)
    for batch in (1, 4):
        feed = {"x": torch.randn(batch, 3, 32, 30).half()}
        torch.testing.assert_close(
            run_plan(plan, feed, target)["y"].float(),
            run_plan(plain, feed)["y"].float(),
            rtol=1e-2,
            atol=1e-2,
        )


@pytest.mark.parametrize(
    "c,k,stride,padding",
    [(3, 3, 2, 1), (8, 7, 2, 3), (3, 7, 1, 3), (3, 6, 3, 0)],
)
def test_space_to_depth_stem_no_change_cases(c, k, stride, padding):
    # A 3x3 stem, more than 4 channels, stride 1, stride 3: left as they are.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, c, 24, 24])
    net.mark_output(
        net.add_convolution(
            x, conv_weight(8, c, k, k), stride=stride, padding=padding, name="conv"
        ),
        "y",
    )
    plan = build_plan(net)
    assert not any("s2d" in layer["name"] for layer in plan.layers()), ops(plan)


@pytest.mark.parametrize("target", DEVICES)
def test_squeeze_excitation_convolutions_become_gemms(target):
    # A 1x1 convolution of a 1x1 image (the squeeze-and-excitation MLP) is a GEMM over the batch;
    # its reshapes and unit-dim transposes are views.
    net = kiln.Network()
    x = net.add_input("x", "float32", [3, 8, 1, 1])
    h = net.add_activation(net.add_convolution(x, conv_weight(4, 8, 1, 1), torch.randn(4)), "relu")
    g = net.add_activation(
        net.add_convolution(h, conv_weight(8, 4, 1, 1), torch.randn(8)), "hardsigmoid"
    )
    net.mark_output(g, "y")
    plan = build_plan(net, target=target)
    got_ops = ops(plan)
    assert "convolution" not in got_ops and got_ops.count("fully_connected") == 2, got_ops
    feed = {"x": torch.randn(3, 8, 1, 1)}
    want = run_plan(build_plan(net, level=0), feed)["y"]
    torch.testing.assert_close(run_plan(plan, feed, target)["y"], want, **FOLD_TOL)


def test_patch_embedding_transposes_cancel():
    # ViT's patch embedding: conv -> flatten(2) -> transpose(1, 2). The GEMM's rows are already
    # [N, patches, E]: the NCHW transpose and the model's transpose cancel (one patch transpose
    # of the image stays).
    class PatchEmbed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 32, 8, stride=8)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    model = PatchEmbed().eval()
    x = torch.randn(2, 3, 32, 40)
    compiled = kiln.compile(model, inputs=[x], device="cpu", min_block_size=1)
    (plan,) = bench_run().engine_plans(compiled)
    got_ops = ops(plan)
    assert got_ops.count("transpose") == 1 and "convolution" not in got_ops, got_ops
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def bench_run():
    """bench/run.py as a module (its engine_plans reads the plans out of a compiled module)."""
    name = "kiln_bench_run"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "bench" / "run.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
