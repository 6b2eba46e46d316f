"""Builder passes around attention: eliminate_common_subexpressions, drop_trivial_attention_masks,
fold_attention_transposes, pack_qkv_attention and pack_attention_views. Structure through
Plan.layers(); numbers: the optimized plan against the plan built at optimization level 0 (no
passes) and, for the BERT and ViT blocks through kiln.compile, against eager PyTorch."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layer_util import build_plan, run_plan

import kiln

# The passes reorder nothing numerically except where attention reads its operands (same math,
# other strides) and the fused QKV GEMM (one GEMM of 3N columns instead of three of N: the same
# float64 dot products on the reference backend). The reference backend rounds once to float32,
# so the two plans agree to float32 rounding.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def optimized(net, feed, profile=None):
    """The level-1 plan, after checking that it computes what the unoptimized plan computes."""
    fused, plain = (
        build_plan(net, level=1, profile=profile),
        build_plan(net, level=0, profile=profile),
    )
    got, want = run_plan(fused, feed), run_plan(plain, feed)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL)
    return fused


def ops(plan):
    return [layer["op"] for layer in plan.layers()]


SWAP = [0, 2, 1, 3]  # transpose(1, 2) of a rank-4 tensor


# --- eliminate_common_subexpressions ----------------------------------------------------------


def test_cse_merges_duplicates_and_their_consumers():
    # r1 == r2 (same op, input, attrs) and then s1 == s2 (same op on the merged tensor): one chain.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 3, 8])
    r1 = net.add_layer("reshape", [x], {"shape": [6, 8]}, "r1")
    r2 = net.add_layer("reshape", [x], {"shape": [6, 8]}, "r2")
    s1 = net.add_layer("softmax", [r1], {"axis": -1}, "s1")
    s2 = net.add_layer("softmax", [r2], {"axis": -1}, "s2")
    # Equal targets given as two separate constant shape tensors merge too.
    c1 = net.add_layer("reshape", [s1, torch.tensor([3, 16])], {}, "c1")
    c2 = net.add_layer("reshape", [s2, torch.tensor([3, 16])], {}, "c2")
    net.mark_output(net.add_elementwise(c1, c2, "sub", name="diff"), "y")
    plan = optimized(net, {"x": torch.randn(2, 3, 8)})
    names = [layer["name"] for layer in plan.layers()]
    assert "r2" not in names and "s2" not in names and "c2" not in names
    assert names[:3] == ["r1", "s1", "c1"]
    assert ops(plan).count("softmax") == 1


def test_cse_keeps_attribute_differences_and_network_outputs():
    net = kiln.Network()
    x = net.add_input("x", "float32", [4, 8])
    a = net.add_layer("softmax", [x], {"axis": -1}, "a")
    b = net.add_layer("softmax", [x], {"axis": 0}, "b")  # other attributes: not a duplicate
    c = net.add_layer("softmax", [x], {"axis": -1}, "c")  # duplicate of a, but a network output
    d = net.add_layer("softmax", [x], {"axis": -1}, "d")  # duplicate of a: goes
    net.mark_output(a, "ya")
    net.mark_output(b, "yb")
    net.mark_output(c, "yc")
    net.mark_output(net.add_elementwise(d, b, "mul", name="m"), "yd")
    x_val = torch.randn(4, 8)
    plan = optimized(net, {"x": x_val})
    names = [layer["name"] for layer in plan.layers() if layer["op"] == "softmax"]
    assert names == ["a", "b", "c"]
    out = run_plan(plan, {"x": x_val})
    torch.testing.assert_close(out["yc"], torch.softmax(x_val, -1), **TOL)
    torch.testing.assert_close(out["yd"], torch.softmax(x_val, -1) * torch.softmax(x_val, 0), **TOL)


def test_cse_nothing_to_merge():
    net = kiln.Network()
    x = net.add_input("x", "float32", [4, 8])
    y = net.add_input("y", "float32", [4, 8])
    sx = net.add_layer("softmax", [x], {"axis": -1}, "sx")
    sy = net.add_layer("softmax", [y], {"axis": -1}, "sy")  # same op and attrs, other input
    net.mark_output(net.add_elementwise(sx, sy, "add", name="add"), "z")
    plan = optimized(net, {"x": torch.randn(4, 8), "y": torch.randn(4, 8)})
    assert [layer["name"] for layer in plan.layers()][:2] == ["sx", "sy"]


# --- drop_trivial_attention_masks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mask,dropped",
    [
        (torch.ones(1, 1, 5, 5, dtype=torch.bool), True),
        (torch.zeros(5, 5), True),
        (-torch.zeros(5), True),  # -0.0 adds nothing either
        (torch.ones(5, 5, dtype=torch.bool).tril(), False),
        (torch.full((5, 5), 1e-3), False),
    ],
)
def test_drop_trivial_attention_masks(mask, dropped):
    net = kiln.Network()
    q, k, v = (net.add_input(n, "float32", [2, 3, 5, 8]) for n in "qkv")
    net.mark_output(net.add_attention(q, k, v, net.add_constant(mask), name="attn"), "y")
    feed = {n: torch.randn(2, 3, 5, 8) for n in "qkv"}
    plan = optimized(net, feed)
    (layer,) = plan.layers()
    assert len(layer["inputs"]) == (3 if dropped else 4)


# --- fold_attention_transposes --------------------------------------------------------------------


def transposed_attention(out_transpose=True, causal=False, hkv=4, extra_use=False):
    """q/k/v inputs [B, S, H, D] -> transpose(1, 2) -> attention [-> transpose(1, 2)]."""
    net = kiln.Network()
    shapes = {"q": [2, 7, 4, 16], "k": [2, 9, hkv, 16], "v": [2, 9, hkv, 8]}
    xs = {n: net.add_input(n, "float32", s) for n, s in shapes.items()}
    ts = {n: net.add_layer("transpose", [x], {"perm": SWAP}, f"t_{n}") for n, x in xs.items()}
    att = net.add_attention(ts["q"], ts["k"], ts["v"], causal=causal, name="attn")
    y = net.add_layer("transpose", [att], {"perm": SWAP}, "t_out") if out_transpose else att
    net.mark_output(y, "y")
    if extra_use:
        net.mark_output(net.add_layer("softmax", [ts["k"]], {"axis": -1}, "other"), "k_softmax")
    feed = {n: torch.randn(s) for n, s in shapes.items()}
    return net, feed


@pytest.mark.parametrize("causal,hkv", [(False, 4), (True, 4), (False, 2), (True, 1)])
def test_fold_attention_transposes(causal, hkv):
    net, feed = transposed_attention(causal=causal, hkv=hkv)
    plan = optimized(net, feed)
    (layer,) = plan.layers()
    assert layer["op"] == "attention" and layer["attrs"]["layout"] == "bshd"
    assert layer["attrs"]["fused"] == "attn,t_out"
    assert [t[2] for t in layer["inputs"]] == [[2, 7, 4, 16], [2, 9, hkv, 16], [2, 9, hkv, 8]]
    assert layer["outputs"][0][2] == [2, 7, 4, 8]


def test_fold_attention_transposes_output_read_as_bhsd():
    # The attention output itself is the network output: one transpose back instead of three in.
    net, feed = transposed_attention(out_transpose=False)
    plan = optimized(net, feed)
    assert ops(plan) == ["attention", "transpose"]
    assert plan.layers()[0]["attrs"]["layout"] == "bshd"
    assert plan.layers()[1]["outputs"][0][2] == [2, 4, 7, 8]


def test_fold_attention_transposes_keeps_a_transpose_used_elsewhere():
    net, feed = transposed_attention(extra_use=True)
    plan = optimized(net, feed)
    assert ops(plan) == ["transpose", "attention", "softmax"]
    assert [layer["name"] for layer in plan.layers()][0] == "t_k"
    assert plan.layers()[1]["attrs"]["layout"] == "bshd"


def test_fold_attention_transposes_chained_attention():
    # attn1's transposed output is attn2's q (read as bhsd): attn1 takes that transpose over, and
    # attn2 must then not fold it again as if it were still a transpose.
    net = kiln.Network()
    feed = {n: torch.randn(2, 4, 4, 8) for n in ("q", "k", "v", "k2", "v2")}
    t = {
        n: net.add_layer("transpose", [net.add_input(n, "float32", [2, 4, 4, 8])], {"perm": SWAP})
        for n in feed
    }
    a1 = net.add_attention(t["q"], t["k"], t["v"], name="attn1")
    q2 = net.add_layer("transpose", [a1], {"perm": SWAP}, "t_mid")
    net.mark_output(net.add_attention(q2, t["k2"], t["v2"], name="attn2"), "y")
    plan = optimized(net, feed)
    by_name = {layer["name"]: layer for layer in plan.layers()}
    assert by_name["attn1"]["attrs"]["layout"] == "bshd" and "t_mid" not in by_name
    assert "layout" not in by_name["attn2"]["attrs"]


def test_fold_attention_transposes_nothing_to_fold():
    # Another permutation (k stored [B, H, D, S], transposed (2, 3)) is not the bshd layout.
    feed = {n: torch.randn(2, 4, 16, 7 if n == "q" else 9) for n in "qkv"}
    net = kiln.Network()
    xs = {n: net.add_input(n, "float32", list(t.shape)) for n, t in feed.items()}
    ts = {
        n: net.add_layer("transpose", [x], {"perm": [0, 1, 3, 2]}, f"t_{n}") for n, x in xs.items()
    }
    net.mark_output(net.add_attention(ts["q"], ts["k"], ts["v"], name="attn"), "y")
    plan = optimized(net, feed)
    assert ops(plan) == ["transpose"] * 3 + ["attention"]
    assert "layout" not in plan.layers()[3]["attrs"]
    # Only two of q, k, v transposed: unchanged too.
    net = kiln.Network()
    q = net.add_layer("transpose", [net.add_input("q", "float32", [2, 7, 4, 16])], {"perm": SWAP})
    k = net.add_layer("transpose", [net.add_input("k", "float32", [2, 9, 4, 16])], {"perm": SWAP})
    v = net.add_input("v", "float32", [2, 4, 9, 16])
    net.mark_output(net.add_attention(q, k, v, name="attn"), "y")
    feed = {
        "q": torch.randn(2, 7, 4, 16),
        "k": torch.randn(2, 9, 4, 16),
        "v": torch.randn(2, 4, 9, 16),
    }
    plan = optimized(net, feed)
    assert ops(plan) == ["transpose", "transpose", "attention"]


# --- pack_qkv_attention (with CSE, the parallel GEMM fusion and the transpose folding) ---------


def self_attention_block(
    batch=2,
    seq=7,
    heads=4,
    head_dim=16,
    dynamic=False,
    shape_tensors=False,
    causal=False,
    q_also_output=False,
    mask=None,
):
    """x [B, S, E] -> Linear q/k/v -> view [B, S, H, D] -> transpose(1, 2) -> SDPA ->
    transpose(1, 2) -> view [B, S, E] -> Linear: torch's multi-head self-attention as exported
    (each projection reshapes the input on its own; the view targets are attributes, or shape
    tensors computed from x's shape as the converters emit them for dynamic dims)."""
    e = heads * head_dim
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1 if dynamic else batch, seq, e])
    profile = {"x": ([1, seq, e], [batch, seq, e], [2 * batch, seq, e])} if dynamic else None

    def target(tail):
        if not shape_tensors:
            return {"shape": [-1 if dynamic else batch, seq, *tail]}, []
        lead = net.add_layer(
            "slice", [net.add_layer("shape", [x], {})], {"axes": [0], "starts": [0], "ends": [2]}
        )
        return {}, [net.add_layer("concat", [lead, torch.tensor(tail)], {"axis": 0})]

    heads_out = []
    for n in "qkv":
        flat = net.add_layer("reshape", [x], {"shape": [-1, e]}, f"flat_{n}")
        proj = net.add_fully_connected(
            flat, torch.randn(e, e) / e**0.5, torch.randn(e), name=f"{n}_proj"
        )
        attrs, extra = target([heads, head_dim])
        split_heads = net.add_layer("reshape", [proj, *extra], attrs, f"view_{n}")
        heads_out.append(net.add_layer("transpose", [split_heads], {"perm": SWAP}, f"t_{n}"))
        if n == "q" and q_also_output:
            net.mark_output(proj, "q_proj")
    m = None if mask is None else net.add_constant(mask)
    att = net.add_attention(*heads_out, m, causal=causal, name="attn")
    merged = net.add_layer("transpose", [att], {"perm": SWAP}, "t_out")
    attrs, extra = target([e])
    merged = net.add_layer("reshape", [merged, *extra], attrs, "merge_heads")
    net.mark_output(net.add_fully_connected(merged, torch.randn(e, e) / e**0.5, name="o_proj"), "y")
    return net, {"x": torch.randn(batch, seq, e)}, profile


# x's reshape to [B * S, E] (one, after CSE), the QKV GEMM, its view as [B, S, 3, H, D], attention,
# the merge of the heads, the output projection.
PACKED_OPS = [
    "reshape",
    "fully_connected",
    "reshape",
    "packed_attention",
    "reshape",
    "fully_connected",
]


@pytest.mark.parametrize("causal", [False, True])
def test_pack_qkv_attention(causal):
    net, feed, _ = self_attention_block(causal=causal)
    plan = optimized(net, feed)
    assert ops(plan) == PACKED_OPS
    qkv_fc, packed_view, packed = plan.layers()[1:4]
    assert qkv_fc["outputs"][0][2] == [14, 192]
    assert packed_view["outputs"][0][2] == [2, 7, 3, 4, 16]
    assert packed["name"] == "attn" and packed["attrs"]["causal"] == int(causal)
    assert packed["attrs"]["fused"] == "attn,t_out"  # the output transpose it took over
    assert packed["outputs"][0][2] == [2, 7, 4, 16]


def test_pack_qkv_attention_with_an_all_true_mask():
    # BERT's exported padding mask without padding: a constant all-true bool [B, 1, 1, S] goes.
    net, feed, _ = self_attention_block(mask=torch.ones(2, 1, 1, 7, dtype=torch.bool))
    plan = optimized(net, feed)
    assert ops(plan) == PACKED_OPS
    assert len(plan.layers()[3]["inputs"]) == 1


def test_pack_qkv_attention_keeps_a_real_mask():
    mask = torch.rand(2, 1, 1, 7) > 0.3
    mask[..., 0] = True
    mask[0, ..., 1] = False  # never all true (that mask would be dropped)
    net, feed, _ = self_attention_block(mask=mask)
    plan = optimized(net, feed)
    assert ops(plan) == PACKED_OPS
    assert len(plan.layers()[3]["inputs"]) == 2


@pytest.mark.parametrize("shape_tensors", [False, True])
def test_pack_qkv_attention_dynamic_batch(shape_tensors):
    net, feed, profile = self_attention_block(dynamic=True, shape_tensors=shape_tensors)
    plan = optimized(net, feed, profile)
    got_ops = ops(plan)
    assert "packed_attention" in got_ops and got_ops.count("fully_connected") == 2
    assert "transpose" not in got_ops and "split" not in got_ops and "attention" not in got_ops
    packed = plan.layers()[got_ops.index("packed_attention")]
    assert packed["outputs"][0][2] == [-1, 7, 4, 16]
    for batch in (1, 3, 4):  # other batch sizes than the one `optimized` ran
        x = {"x": torch.randn(batch, 7, 64)}
        got, want = run_plan(plan, x), run_plan(build_plan(net, level=0, profile=profile), x)
        torch.testing.assert_close(got["y"], want["y"], **TOL)


def test_pack_qkv_attention_not_when_a_projection_is_used_elsewhere():
    # The q projection is also a network output: the split output it became has a second reader,
    # so the split stays and attention reads the reshapes (still in bshd, no transposes).
    net, feed, _ = self_attention_block(q_also_output=True)
    plan = optimized(net, feed)
    got_ops = ops(plan)
    assert "packed_attention" not in got_ops and "split" in got_ops
    assert "transpose" not in got_ops
    assert plan.layers()[got_ops.index("attention")]["attrs"]["layout"] == "bshd"


def test_pack_qkv_attention_not_on_grouped_query():
    # k/v projections narrower than q (grouped-query attention): the split is not three equal
    # parts, nothing is packed; transposes still fold.
    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 7, 64])
    flat = net.add_layer("reshape", [x], {"shape": [-1, 64]})
    hs = []
    for n, heads in (("q", 4), ("k", 2), ("v", 2)):
        proj = net.add_fully_connected(flat, torch.randn(heads * 16, 64) / 8, name=f"{n}_proj")
        view = net.add_layer("reshape", [proj], {"shape": [2, 7, heads, 16]})
        hs.append(net.add_layer("transpose", [view], {"perm": SWAP}))
    att = net.add_attention(*hs, name="attn")
    net.mark_output(net.add_layer("transpose", [att], {"perm": SWAP}), "y")
    plan = optimized(net, {"x": torch.randn(2, 7, 64)})
    got_ops = ops(plan)
    assert "packed_attention" not in got_ops and "split" in got_ops and "transpose" not in got_ops


# --- through kiln.compile: BERT blocks ------------------------------------------------------------

# --- pack_attention_views -----------------------------------------------------------------------
# torch's MultiheadAttention, as torch.export writes it: the packed in-projection y [S, B, 3E] is
# viewed [S, B, 3, E], unsqueezed, transposed and squeezed to [3, S, B, E]; q, k, v are select(0, i)
# of that, viewed [S, B*H, D], transposed to [B*H, S, D] and viewed [B, H, S, D]. The attention
# output is permuted to [S, B, H, D] and flattened for the out-projection.


def mha_views(b, s, h, d, batch_first=False, out_perm=(2, 0, 1, 3), picks=(0, 1, 2), mask=False):
    e = h * d
    net = kiln.Network()
    if batch_first:  # rows of y in (b, s) order: the bshd packing
        y = net.add_input("y", "float32", [b, s, 3 * e])
        y4 = net.add_layer("reshape", [y], {"shape": [b, s, 3, e]}, "y4")
        qkv = net.add_layer("transpose", [y4], {"perm": [2, 0, 1, 3]}, "qkv")  # [3, B, S, E]
    else:
        y = net.add_input("y", "float32", [s, b, 3 * e])
        y4 = net.add_layer("reshape", [y], {"shape": [s, b, 3, e]}, "y4")
        u = net.add_layer("unsqueeze", [y4], {"axes": [0]}, "u")
        t = net.add_layer("transpose", [u], {"perm": [3, 1, 2, 0, 4]}, "t")
        qkv = net.add_layer("squeeze", [t], {"axes": [3]}, "qkv")  # [3, S, B, E]
    heads = []
    for j, i in enumerate(picks):
        index = net.add_constant(np.array(i, dtype=np.int64), f"i{j}")
        g = net.add_layer("gather", [qkv, index], {"axis": 0}, f"g{j}")
        if batch_first:
            r = net.add_layer("reshape", [g], {"shape": [b, s, h, d]}, f"r{j}")
            heads.append(net.add_layer("transpose", [r], {"perm": SWAP}, f"h{j}"))
        else:
            r = net.add_layer("reshape", [g], {"shape": [s, b * h, d]}, f"r{j}")
            tr = net.add_layer("transpose", [r], {"perm": [1, 0, 2]}, f"t{j}")
            heads.append(net.add_layer("reshape", [tr], {"shape": [b, h, s, d]}, f"h{j}"))
    inputs = heads
    if mask:
        inputs = heads + [net.add_input("m", "bool", [b, 1, 1, s])]
    o = net.add_attention(*inputs, name="attn")
    if out_perm is not None:
        o = net.add_layer("transpose", [o], {"perm": list(out_perm)}, "o_perm")
    net.mark_output(o, "out")
    feed = {"y": torch.randn(*(net.inputs[0].shape))}
    if mask:
        feed["m"] = torch.rand(b, 1, 1, s) > 0.3
        feed["m"][..., 0] = True
    return net, feed


def packed_layers(plan):
    return [layer for layer in plan.layers() if layer["op"] == "packed_attention"]


@pytest.mark.parametrize("b,s,h,d", [(2, 7, 3, 8), (1, 9, 2, 16), (3, 1, 4, 8)])
def test_pack_attention_views_sequence_first(b, s, h, d):
    net, feed = mha_views(b, s, h, d)
    plan = optimized(net, feed)
    (packed,) = packed_layers(plan)
    # (With B == 1 both packings read the same memory; the output permute decides.)
    assert packed["attrs"]["layout"] == "sbhd"
    assert "attention" not in ops(plan) and "gather" not in ops(plan)
    assert [op for op in ops(plan) if op != "reshape"] == ["packed_attention"]


def test_pack_attention_views_batch_first_and_mask():
    net, feed = mha_views(2, 7, 3, 8, batch_first=True, out_perm=SWAP, mask=True)
    plan = optimized(net, feed)
    (packed,) = packed_layers(plan)
    assert packed["attrs"]["layout"] == "bshd" and len(packed["inputs"]) == 2
    assert [op for op in ops(plan) if op != "reshape"] == ["packed_attention"]


@pytest.mark.parametrize("out_perm", [None, (0, 2, 1, 3)])
def test_pack_attention_views_output_transposed_back(out_perm):
    # The attention output is read as [B, H, S, D] (or permuted otherwise): packed_attention
    # writes [S, B, H, D] and one transpose restores the order.
    net, feed = mha_views(2, 5, 2, 8, out_perm=out_perm)
    plan = optimized(net, feed)
    assert len(packed_layers(plan)) == 1
    assert "attention" not in ops(plan)


@pytest.mark.parametrize("picks", [(1, 0, 2), (0, 0, 2)])
def test_pack_attention_views_not_when_q_k_v_are_not_one_token(picks):
    # q and k swapped, or k reading q's slab: not packed_attention's reading of y.
    net, feed = mha_views(2, 5, 2, 8, picks=picks)
    plan = optimized(net, feed)
    assert not packed_layers(plan) and "attention" in ops(plan)


def test_pack_attention_views_not_on_dynamic_shapes():
    net, feed = mha_views(2, 5, 2, 8)
    dyn = kiln.Network()
    y = dyn.add_input("y", "float32", [5, -1, 48])
    h = [dyn.add_layer("reshape", [y], {"shape": [-1, 2, 5, 8]}, f"h{j}") for j in range(3)]
    dyn.mark_output(dyn.add_attention(*h, name="attn"), "out")
    profile = {"y": ([5, 1, 48], [5, 2, 48], [5, 4, 48])}
    plan = optimized(dyn, feed, profile)
    assert not packed_layers(plan)


def encoder_block(hidden, heads):
    from torchvision.models.vision_transformer import EncoderBlock

    torch.manual_seed(0)
    return EncoderBlock(heads, hidden, 2 * hidden, 0.0, 0.0).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_compile_multihead_attention_packs_views(batch):
    # torchvision's ViT encoder block (nn.MultiheadAttention, batch_first=True): one QKV GEMM and
    # one packed_attention; no gathers, and no copies left: the transposes between batch- and
    # sequence-first go (the projections read and write (b, s) rows and the attention runs in
    # bshd), and the residual add after the out-projection is its epilogue: BERT's structure.
    run = _bench_run()
    model = encoder_block(64, 4)
    x = torch.randn(batch, 13, 64)
    compiled = kiln.compile(model, inputs=[x], device="cpu")
    (plan,) = run.engine_plans(compiled)
    (packed,) = packed_layers(plan)
    assert packed["attrs"]["layout"] == "bshd"
    got_ops = ops(plan)
    assert "attention" not in got_ops and "gather" not in got_ops
    assert got_ops.count("fully_connected") == 4
    copies = [
        layer["name"]
        for layer in plan.layers()
        if layer["op"] == "transpose" and not layer["attrs"].get("alias")
    ]
    assert not copies, kiln.inspect(plan).text(arena=False)
    assert got_ops.count("elementwise") == 0, got_ops
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


ROOT = Path(__file__).resolve().parents[2]


def _bench_run():
    name = "kiln_bench_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def bert(hidden, heads, layers):
    from transformers import BertConfig, BertModel

    zoo = _bench_run().zoo  # bench/models.py
    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        vocab_size=500,
        max_position_embeddings=64,
    )
    return zoo.LastHiddenState(BertModel(config, add_pooling_layer=False)).eval()


@pytest.mark.parametrize(
    "hidden,heads,layers,seq",
    [(64, 4, 2, 13), (128, 2, 1, 33)],  # head sizes 16 and 64 (the tensor-core size on CUDA)
)
def test_compile_bert_packs_attention(hidden, heads, layers, seq):
    run = _bench_run()
    model = bert(hidden, heads, layers)
    x = torch.randint(0, 500, (2, seq))
    compiled = kiln.compile(model, inputs=[x], device="cpu")
    (plan,) = run.engine_plans(compiled)
    got_ops = ops(plan)
    # Per layer: the QKV GEMM, the output projection and the two MLP GEMMs.
    assert got_ops.count("fully_connected") == 4 * layers
    assert got_ops.count("packed_attention") == layers
    for absent in ("attention", "transpose", "split"):
        assert absent not in got_ops, kiln.inspect(plan).text(arena=False)
    for layer in plan.layers():
        if layer["op"] == "packed_attention":
            assert len(layer["inputs"]) == 1  # the all-true padding mask is gone
            assert layer["inputs"][0][2] == [2, seq, 3, heads, hidden // heads]
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compile_bert_dynamic_batch():
    # With a dynamic batch the exported head split is view(B, S, -1, D): the head count is not
    # known when building (B is a run-time value), so pack_qkv_attention cannot prove that a
    # token is one row of the QKV GEMM and leaves the attention in bshd on the split. CSE still
    # merges the three input reshapes (and their shape arithmetic), so Q, K, V are one GEMM.
    model = bert(64, 4, 1)
    spec = kiln.Input(min_shape=(1, 16), opt_shape=(2, 16), max_shape=(4, 16), dtype=torch.int64)
    compiled = kiln.compile(model, inputs=[spec], device="cpu")
    (plan,) = _bench_run().engine_plans(compiled)
    got_ops = ops(plan)
    assert got_ops.count("fully_connected") == 4
    assert "transpose" not in got_ops
    for batch in (1, 3):
        x = torch.randint(0, 500, (batch, 16))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


# --- fuse_attention (attention written out, as ONNX exports it) ---------------------------------


def _written_out_attention(mask: bool, scale: str, guard: bool):
    """q·kᵀ (kᵀ a transpose of k, or transpose_b), scaled by a division, a multiplication of the
    scores or of q and kᵀ, plus an optional additive mask, softmax, torch.onnx's NaN guard, @ v."""
    net = kiln.Network()
    q = net.add_input("q", "float32", [2, 4, 8, 16])
    k = net.add_input("k", "float32", [2, 4, 8, 16])
    v = net.add_input("v", "float32", [2, 4, 8, 16])
    if scale == "q_and_k":
        q = net.add_elementwise(q, np.array(0.5, np.float32), "mul")
    kt = net.add_layer("transpose", [k], {"perm": [0, 1, 3, 2]}, "kt")
    if scale == "q_and_k":
        kt = net.add_elementwise(kt, np.array(0.5, np.float32), "mul")
    s = net.add_layer("matmul", [q, kt], {}, "qk")
    if scale == "div":
        s = net.add_elementwise(s, np.array(4.0, np.float32), "div")
    elif scale == "mul":
        s = net.add_elementwise(s, np.array(0.25, np.float32), "mul")
    if mask:
        m = net.add_input("mask", "float32", [2, 1, 1, 8])
        s = net.add_elementwise(s, m, "add")
    p = net.add_layer("softmax", [s], {"axis": -1}, "p")
    if guard:
        nan = net.add_elementwise(p, p, "ne")
        p = net.add_layer("where", [nan, np.array(0.0, np.float32), p], {}, "guard")
    net.mark_output(net.add_layer("matmul", [p, v], {}, "pv"), "y")
    return net


@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("scale", ["div", "mul", "q_and_k", "none"])
@pytest.mark.parametrize("guard", [False, True], ids=["", "nan-guard"])
def test_written_out_attention_becomes_one_attention_layer(mask, scale, guard):
    net = _written_out_attention(mask, scale, guard)
    feed = {name: torch.randn(2, 4, 8, 16) for name in ("q", "k", "v")}
    if mask:
        m = torch.zeros(2, 1, 1, 8)
        m[0, ..., 5:] = -1e4  # padding keys of the first sample
        feed["mask"] = m
    plan = optimized(net, feed)
    got = ops(plan)
    assert "softmax" not in got and got.count("attention") == 1, got
    want = {"div": 0.25, "mul": 0.25, "q_and_k": 0.25, "none": 1.0}[scale]
    attn = next(la for la in plan.layers() if la["op"] == "attention")
    assert attn["attrs"]["scale"] == pytest.approx(want)


def test_written_out_attention_whose_scores_are_also_read_stays():
    # The scaled scores are a network output too: fusing would lose them, so nothing changes.
    net = kiln.Network()
    q, k, v = (net.add_input(n, "float32", [2, 4, 8, 16]) for n in ("q", "k", "v"))
    kt = net.add_layer("transpose", [k], {"perm": [0, 1, 3, 2]}, "kt")
    s = net.add_elementwise(
        net.add_layer("matmul", [q, kt], {}, "qk"), np.array(4.0, np.float32), "div"
    )
    p = net.add_layer("softmax", [s], {"axis": -1}, "p")
    net.mark_output(net.add_layer("matmul", [p, v], {}, "pv"), "y")
    net.mark_output(s, "scores")
    feed = {name: torch.randn(2, 4, 8, 16) for name in ("q", "k", "v")}
    got = ops(optimized(net, feed))
    assert "attention" not in got and "softmax" in got, got


# --- unflatten_batched_matmuls: einsum-written attention (MaxViT) -------------------------------


class EinsumAttention(torch.nn.Module):
    """torchvision MaxViT's RelativePositionalMultiHeadAttention core: q, k, v [B, W, H, S, D]
    (windows W), scores by einsum, a learned relative bias [H, S, S], softmax, einsum with v."""

    def __init__(self, heads=2, size=7, dim=8):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(heads, size * size, size * size))
        self.scale = dim**-0.5

    def forward(self, q, k, v):
        k = k * self.scale
        s = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        p = torch.softmax(s + self.bias, dim=-1)
        return torch.einsum("B G H I J, B G H J D -> B G H I D", p, v)


class WindowHeadsAttention(EinsumAttention):
    """MaxViT's whole step: q, k, v [B, W, S, H * D] split into heads ([B, W, H, S, D] through a
    view and a transpose), EinsumAttention, the heads merged back to [B, W, S, H * D]."""

    def forward(self, q, k, v):
        b, w, s, e = q.shape

        def heads(t):
            return t.view(b, w, s, 2, e // 2).transpose(2, 3)

        y = super().forward(heads(q), heads(k), heads(v))
        return y.transpose(2, 3).reshape(b, w, s, e)


class ShiftedWindowAttention(torch.nn.Module):
    """torchvision Swin's shifted_window_attention core: scores of q [B * W, H, S, D] plus a
    relative bias [H, S, S], viewed as [B, W, H, S, S] for the shifted-window mask [W, S, S],
    viewed back, softmax, @ v."""

    def __init__(self, windows=4, heads=2, size=49):
        super().__init__()
        self.windows = windows
        self.bias = torch.nn.Parameter(torch.randn(heads, size, size))
        mask = torch.zeros(windows, size, size)
        mask[1:, : size // 2, size // 2 :] = -100.0  # what Swin's mask does across shifted regions
        self.register_buffer("mask", mask)

    def forward(self, q, k, v):
        q = q * q.shape[-1] ** -0.5
        s = q.matmul(k.transpose(-2, -1)) + self.bias
        b, h, n = s.shape[0] // self.windows, s.shape[1], s.shape[2]
        s = s.view(b, self.windows, h, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
        p = torch.softmax(s.view(-1, h, n, n), dim=-1)
        return p.matmul(v)


class CosineWindowAttention(torch.nn.Module):
    """torchvision Swin V2's attention core: q and k normalized (F.normalize: a norm, an expand, a
    division), scores times a learned logit scale per head [H, 1, 1], a bias, softmax, @ v."""

    def __init__(self, heads=2, size=49):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.log(10 * torch.rand(heads, 1, 1) + 1))
        self.bias = torch.nn.Parameter(torch.randn(heads, size, size))

    def forward(self, q, k, v):
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        s = q @ k.transpose(-2, -1) * torch.clamp(self.logit_scale, max=4.6).exp()
        return torch.softmax(s + self.bias, dim=-1) @ v


def _einsum_inputs(batch, device="cpu", dtype=torch.float32):
    return [torch.randn(batch, 4, 2, 49, 8, device=device, dtype=dtype) for _ in range(3)]


def _window_inputs(batch, device="cpu", dtype=torch.float32):
    return [torch.randn(batch * 4, 2, 49, 8, device=device, dtype=dtype) for _ in range(3)]


def _heads_inputs(batch, device="cpu", dtype=torch.float32):
    return [torch.randn(batch, 4, 49, 16, device=device, dtype=dtype) for _ in range(3)]


ATTENTION_MODULES = {
    "einsum": (EinsumAttention, _einsum_inputs),
    "einsum-heads": (WindowHeadsAttention, _heads_inputs),
    "shifted-window": (ShiftedWindowAttention, _window_inputs),
    "cosine": (CosineWindowAttention, _window_inputs),
}


@pytest.mark.parametrize("kind", ATTENTION_MODULES)
@pytest.mark.parametrize("batch", [1, 2])
def test_written_out_window_attention_becomes_one_attention_layer(kind, batch):
    # einsum's decomposition (unflatten_batched_matmuls) and a mask added through views
    # (fuse_attention's mask chain): one attention layer, nothing copied, eager's numbers.
    run = _bench_run()
    torch.manual_seed(0)
    module, inputs = ATTENTION_MODULES[kind]
    model = module().eval()
    x = inputs(batch)
    compiled = kiln.compile(model, inputs=x, device="cpu")
    (plan,) = run.engine_plans(compiled)
    got = ops(plan)
    assert got.count("attention") == 1 and "matmul" not in got and "softmax" not in got, got
    copies = [
        la for la in plan.layers() if la["op"] == "transpose" and not la["attrs"].get("alias")
    ]
    assert not copies, kiln.inspect(plan).text(arena=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*x), model(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ATTENTION_MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_written_out_window_attention_on_cuda(kind, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    run = _bench_run()
    torch.manual_seed(0)
    module, inputs = ATTENTION_MODULES[kind]
    model = module().eval().cuda()
    x = inputs(2, "cuda", dtype)
    want = model(*[t.float() for t in x])
    model = model.to(dtype)
    compiled = kiln.compile(model, inputs=x, enabled_precisions={dtype})
    (plan,) = run.engine_plans(compiled)
    assert ops(plan).count("attention") == 1
    with torch.no_grad():
        got = compiled(*x).float()
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
