"""attention layer (scaled dot-product attention): reference backend vs eager torch (CPU), CUDA vs
torch (GPU), with torch.nn.functional.scaled_dot_product_attention in float64 as the oracle."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from layer_util import DEVICES, TOLERANCE, run_layer

import kiln

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REF_DTYPES = [torch.float32, torch.float16]  # host execution has no numpy bfloat16

# Tolerances against the float64 oracle on the same (already rounded) inputs.
# Reference: computes in double and rounds once to the output dtype (via float32), so float32 is
# off by half an ulp (TOLERANCE is a few ulp) and float16/bfloat16 by half an ulp of their own.
# CUDA float32: the dot products (D terms), the exponentials and the weighted sum (Sk terms) are
# float32 sums, worst case about (D + Sk) * 2^-24 ~ 2e-5 relative to the inputs' magnitude (O(1));
# outputs near 0 (cancellation in the weighted sum) need the absolute term.
# CUDA float16/bfloat16: float32 math as above, far below one rounding of the output (ulp 2^-10 /
# 2^-7), so TOLERANCE's two ulp of the output dtype hold, except that the tensor-core kernel
# (attention_mma.cu: head sizes 32/64/128) rounds the probabilities to the input dtype before
# P @ V, as flash attention does: each weight is off by up to half an ulp (2^-11 / 2^-8 relative),
# an error of that order times the mean |v| (~0.8 for unit normal v) on top of the output's own
# rounding. Relative to the output that is large where the output is near 0, so float16's absolute
# term is two output ulp at 1 (2e-3) instead of one; bfloat16's 1e-2 already covers it.
CUDA_TOLERANCE = {
    **TOLERANCE,
    torch.float32: {"rtol": 1e-4, "atol": 3e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
}


def make_inputs(shape_q, hkv, sk, dv=None, mask=None, dtype=torch.float32, fully_masked_rows=False):
    """q, k, v (and a mask) for q of `shape_q` = [B..., Hq, Sq, D]; k/v share q's batch dims.

    mask: None, ("bool" | "float", shape) with shape broadcastable to [B..., Hq, Sq, Sk]. Key 0 is
    always attended unless fully_masked_rows, so no row is fully masked by accident.
    """
    *batch, hq, sq, d = shape_q
    dv = d if dv is None else dv
    kv_lead = [*batch, hkv] if len(shape_q) >= 4 else [hkv]
    q = torch.randn(shape_q).to(dtype)
    k = torch.randn([*kv_lead, sk, d]).to(dtype)
    v = torch.randn([*kv_lead, sk, dv]).to(dtype)
    inputs = [q, k, v]
    if mask is not None:
        inputs.append(make_mask(*mask, dtype=dtype, fully_masked_rows=fully_masked_rows))
    return inputs


def make_mask(kind, mshape, dtype=torch.float32, fully_masked_rows=False):
    """A random bool (True = attend) or additive ("float": offsets, -inf where hidden) mask."""
    keep = torch.rand(mshape) > 0.3
    if not fully_masked_rows and mshape[-1] > 0:
        keep[..., 0] = True
    if kind == "bool":
        return keep
    bias = torch.randn(mshape) * 2
    return torch.where(keep, bias, torch.full_like(bias, float("-inf"))).to(dtype)


def torch_attention(inputs, causal=False, scale=None):
    """The oracle: torch's SDPA in float64 on the given (rounded) inputs."""
    q, k, v = (t.double() for t in inputs[:3])
    mask = None
    if len(inputs) == 4:
        mask = inputs[3] if inputs[3].dtype == torch.bool else inputs[3].double()
        if mask.dim() < 2:  # torch wants a matrix at least; Kiln broadcasts any rank
            mask = mask.unsqueeze(0)
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def build(causal=False, scale=None, name="attn"):
    def add(net, q, k, v, mask=None):
        return net.add_attention(q, k, v, mask, causal=causal, scale=scale, name=name)

    return add


def run_dynamic_batch(add_layer, inputs, target, batched=3):
    """run_layer with dim 0 dynamic in the first `batched` inputs (q, k, v) and in a mask whose dim
    0 is a batch dim that is not broadcast (dynamic=True makes only the first input dynamic, and
    the batch dims of q, k and v must agree for every shape of the profile)."""
    dynamic = [i for i, t in enumerate(inputs) if i < batched or (t.dim() == 4 and t.shape[0] != 1)]
    return run_layer(add_layer, inputs, target, dynamic=dynamic)


def check(target, inputs, causal=False, scale=None, dynamic=False, tolerance=None):
    if dynamic:
        got = run_dynamic_batch(build(causal, scale), inputs, target)
    else:
        got = run_layer(build(causal, scale), inputs, target)
    want = torch_attention(inputs, causal, scale)
    assert got.dtype == inputs[0].dtype
    assert got.shape == want.shape
    tol = tolerance or TOLERANCE[inputs[0].dtype]
    torch.testing.assert_close(got.double(), want, **tol)


# --- reference backend (CPU): small sizes, every option ------------------------------------------

REF_SIZES = [  # (Sq, Sk, D): single rows/keys, tails, Sq != Sk both ways
    (1, 1, 16),
    (7, 9, 16),
    (1, 33, 80),
    (20, 9, 64),
    (64, 33, 16),
    (13, 128, 24),
]


@pytest.mark.parametrize("sq,sk,d", REF_SIZES)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_rank4(sq, sk, d, causal):
    check("cpu", make_inputs((2, 3, sq, d), 3, sk), causal=causal)


@pytest.mark.parametrize("sq,sk,d", [(7, 9, 16), (9, 7, 16), (5, 5, 80)])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_rank3(sq, sk, d, causal):
    check("cpu", make_inputs((3, sq, d), 3, sk), causal=causal)


@pytest.mark.parametrize("dtype", REF_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_dtypes(dtype, causal):
    check("cpu", make_inputs((2, 2, 11, 32), 2, 19, dtype=dtype), causal=causal)


def test_reference_value_head_size_differs():
    check("cpu", make_inputs((2, 2, 7, 64), 2, 9, dv=24))


def test_reference_scale():
    check("cpu", make_inputs((1, 2, 7, 16), 2, 9), scale=0.3)
    check("cpu", make_inputs((1, 2, 7, 16), 2, 9), causal=True, scale=1.7)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rank", [3, 4])
def test_reference_grouped_query(causal, rank):
    shape = (2, 8, 7, 16) if rank == 4 else (8, 7, 16)
    check("cpu", make_inputs(shape, 2, 9), causal=causal)


MASKS = [  # (kind, mask shape) for q [2, 4, Sq=7, D] and Sk=9
    ("bool", (2, 1, 1, 9)),  # padding mask
    ("bool", (7, 9)),
    ("bool", (2, 4, 7, 9)),
    ("float", (2, 1, 1, 9)),
    ("float", (7, 9)),
    ("float", (9,)),
    ("float", (4, 1, 9)),
    ("float", (2, 4, 7, 9)),
]


@pytest.mark.parametrize("kind,mshape", MASKS)
@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_reference_mask(kind, mshape, dtype):
    check("cpu", make_inputs((2, 4, 7, 16), 4, 9, mask=(kind, mshape), dtype=dtype))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_reference_mask_grouped_query_rank3(kind):
    check("cpu", make_inputs((2, 8, 7, 16), 2, 9, mask=(kind, (8, 1, 9))))
    check("cpu", make_inputs((4, 7, 16), 4, 9, mask=(kind, (7, 9))))


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("target", DEVICES)
def test_fully_masked_rows_are_zero(kind, target):
    # Kiln's documented result (torch's math backend agrees): zeros for a row with no visible key.
    inputs = make_inputs((2, 2, 5, 16), 2, 40, mask=(kind, (2, 1, 5, 40)), fully_masked_rows=True)
    keep = inputs[3] if kind == "bool" else inputs[3] != float("-inf")
    keep[0, 0, 1] = False
    keep[1, 0, 4] = False
    if kind == "float":
        inputs[3] = torch.where(keep, inputs[3], torch.full_like(inputs[3], float("-inf")))
    got = run_layer(build(), inputs, target)
    dead = ~keep.any(-1).expand(2, 2, 5)
    assert dead.sum() >= 2
    assert torch.equal(got[dead], torch.zeros_like(got[dead]))
    want = torch_attention(inputs)  # its fully masked rows are not compared
    torch.testing.assert_close(got[~dead].double(), want[~dead], **CUDA_TOLERANCE[torch.float32])


DYNAMIC_MASKS = [None, ("bool", (3, 1, 1, 9)), ("float", (7, 9))]


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "mask,causal",
    # causal and a mask are exclusive (refused: test_errors_name_the_layer), so no such pair.
    [
        (mask, causal)
        for mask in DYNAMIC_MASKS
        for causal in (False, True)
        if mask is None or not causal
    ],
)
def test_dynamic_batch(target, mask, causal):
    inputs = make_inputs((3, 4, 7, 16), 2, 9, mask=mask)
    check(target, inputs, causal=causal, dynamic=True, tolerance=CUDA_TOLERANCE[torch.float32])


@pytest.mark.parametrize("target", DEVICES)
def test_dynamic_batch_rank3_grouped_query(target):
    check(
        target, make_inputs((8, 5, 16), 2, 9), dynamic=True, tolerance=CUDA_TOLERANCE[torch.float32]
    )


@pytest.mark.parametrize("target", DEVICES)
@pytest.mark.parametrize(
    "shape_q,hkv,sk",
    [((2, 2, 0, 16), 2, 9), ((0, 2, 7, 16), 2, 9), ((2, 2, 7, 16), 2, 0)],
)
def test_empty(target, shape_q, hkv, sk):
    # Sk == 0: softmax over nothing; torch (and Kiln) give zeros.
    check(target, make_inputs(shape_q, hkv, sk), tolerance=CUDA_TOLERANCE[torch.float32])


def test_network_records_attributes():
    net = kiln.Network()
    q = net.add_input("q", "float32", (1, 2, 3, 4))
    k = net.add_input("k", "float32", (1, 2, 5, 4))
    v = net.add_input("v", "float32", (1, 2, 5, 6))
    layer = net.add_attention(q, k, v, causal=True, scale=0.5, name="sdpa")
    assert layer.output.shape == (1, 2, 3, 6)
    assert layer.output.dtype == "float32"
    (_, op, _, _, attrs) = net.layers[-1]
    assert op == "attention" and attrs == {"causal": 1, "scale": 0.5}


# --- errors ---------------------------------------------------------------------------------------


def add_to_network(shapes, dtypes=None, attrs=None):
    net = kiln.Network()
    dtypes = dtypes or ["float32"] * len(shapes)
    ins = [
        net.add_input(f"in{i}", dt, s) for i, (s, dt) in enumerate(zip(shapes, dtypes, strict=True))
    ]
    return net.add_layer("attention", ins, attrs or {}, name="attn")


Q, K, V = (2, 8, 5, 16), (2, 2, 7, 16), (2, 2, 7, 32)


@pytest.mark.parametrize(
    "shapes,dtypes,attrs,match",
    [
        ([Q, (2, 2, 7, 8), V], None, None, "same head size"),
        ([(2, 6, 5, 16), (2, 4, 7, 16), (2, 4, 7, 16)], None, None, "multiple of key/value heads"),
        ([Q, K, (2, 2, 6, 32)], None, None, "same sequence length"),
        ([Q, K, (2, 4, 7, 32)], None, None, "same number of heads"),
        ([Q, (3, 2, 7, 16), (3, 2, 7, 32)], None, None, "batch dims"),
        ([Q, K, V, (5, 8)], None, None, "does not broadcast"),
        ([Q, K, V, (2, 8, 5, 7, 1)], None, None, "does not broadcast"),
        ([Q, K, V, (3, 1, 1, 7)], None, None, "does not broadcast"),
        ([Q, K, V], ["int32"] * 3, None, "floating point"),
        ([Q, K, V], ["float32", "float16", "float32"], None, "share one dtype"),
        ([Q, K, V, (5, 7)], ["float32"] * 3 + ["int32"], None, "mask must be bool"),
        ([Q, K, V, (5, 7)], ["float32"] * 3 + ["float16"], None, "mask must be bool"),
        ([Q, K, V, (5, 7)], ["float32"] * 3 + ["bool"], {"causal": 1}, "causal=1 together"),
        ([(5, 16), (7, 16), (7, 32)], None, None, "rank >= 3"),
        ([Q, K[1:], V], None, None, "rank >= 3"),
        ([Q, K, V], None, {"causal": 2}, "causal must be 0 or 1"),
        ([Q, K, V], None, {"causal": 0.5}, "'causal' must be an int"),
        ([Q, K, V], None, {"scale": "big"}, "'scale' must be a float"),
        ([Q, K], None, None, "takes 3 to 4 inputs"),
    ],
)
def test_errors_name_the_layer(shapes, dtypes, attrs, match):
    with pytest.raises(kiln.KilnError, match=rf"layer 'attn' \(attention\).*{match}"):
        add_to_network(shapes, dtypes, attrs)


def test_dynamic_dims_are_accepted_at_build_time():
    layer = add_to_network([(-1, 8, -1, 16), (-1, 2, 7, 16), (-1, 2, 7, 32), (-1, 1, 1, 7)])
    assert layer.output.shape == (-1, 8, -1, 32)


# --- CUDA (GPU): bigger sizes, the full option matrix ---------------------------------------------

GPU_SQ, GPU_SK, GPU_D = [1, 7, 64, 130], [1, 9, 128, 257], [16, 64, 80, 128]


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk,d", list(itertools.product(GPU_SQ, GPU_SK, GPU_D)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rank4(sq, sk, d, causal, dtype):
    inputs = make_inputs((2, 3, sq, d), 3, sk, dtype=dtype)
    check("cuda", inputs, causal=causal, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk", [(7, 9), (130, 257), (64, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rank3(sq, sk, causal, dtype):
    inputs = make_inputs((3, sq, 64), 3, sk, dtype=dtype)
    check("cuda", inputs, causal=causal, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("d,dv", [(64, 32), (16, 80), (128, 256), (256, 256), (256, 8), (1, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_head_sizes(d, dv, dtype):
    # (256, 256) takes more than 48 KiB of shared memory (the opt-in path).
    inputs = make_inputs((2, 2, 70, d), 2, 100, dv=dv, dtype=dtype)
    check("cuda", inputs, causal=True, tolerance=CUDA_TOLERANCE[dtype])
    check("cuda", inputs, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [3, 4])
def test_cuda_grouped_query_and_scale(causal, dtype, rank):
    shape = (2, 8, 67, 64) if rank == 4 else (8, 67, 64)
    inputs = make_inputs(shape, 2, 129, dtype=dtype)
    check("cuda", inputs, causal=causal, tolerance=CUDA_TOLERANCE[dtype])
    check("cuda", inputs, causal=causal, scale=0.05, tolerance=CUDA_TOLERANCE[dtype])


GPU_MASKS = [  # for q [2, 4, Sq=130, D] and Sk=257
    ("bool", (2, 1, 1, 257)),
    ("bool", (130, 257)),
    ("bool", (2, 4, 130, 257)),
    ("float", (2, 1, 1, 257)),
    ("float", (130, 257)),
    ("float", (257,)),
    ("float", (4, 1, 257)),
    ("float", (2, 4, 130, 257)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,mshape", GPU_MASKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hkv", [4, 2])
def test_cuda_mask(kind, mshape, dtype, hkv):
    inputs = make_inputs((2, 4, 130, 80), hkv, 257, mask=(kind, mshape), dtype=dtype)
    check("cuda", inputs, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
def test_cuda_many_heads_and_long_keys():
    # More blocks than one wave and several hundred key tiles per block.
    inputs = make_inputs((16, 16, 33, 64), 4, 2049, dtype=torch.float16)
    check("cuda", inputs, causal=False, tolerance=CUDA_TOLERANCE[torch.float16])


@pytest.mark.gpu
def test_cuda_refuses_head_size_above_256():
    inputs = make_inputs((1, 1, 4, 272), 1, 4)
    with pytest.raises(kiln.KilnError, match=r"layer 'attn' \(attention\).*up to 256"):
        run_layer(build(), inputs, "cuda")


# Float16/bfloat16 with head size 32, 64, 80, 96 or 128 takes the tensor-core flash-attention kernel
# (attention_mma.cu; CUDA_TOLERANCE says why its tolerance is wider). Its tiles: 64 query rows
# (16 per warp) and 64 keys, so the sizes below cover single rows/keys, partial warps, partial
# blocks, several key tiles with a partial last one, and Sq != Sk both ways (decoder-style Sq = 1).
# float32 takes the tensor-core kernel too (3xTF32, head sizes 32 and 64; 80, 96 and 128 take the
# generic kernel): its products keep FP32 accuracy, so CUDA_TOLERANCE[float32] holds for both.
# Head size 80 (vit_h_14) has an odd count of k16 steps (the last one loads K with ldmatrix.x2) and
# 10 vectors per row (no power of two).
MMA_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
MMA_SIZES = [  # (Sq, Sk)
    (1, 1),
    (16, 16),
    (77, 77),
    (128, 128),
    (197, 197),
    (300, 300),
    (1, 197),
    (1, 300),
    (16, 300),
    (77, 300),
    (300, 77),
    (128, 16),
]


def check_mma(inputs, causal=False, scale=None, dynamic=False):
    check("cuda", inputs, causal, scale, dynamic, tolerance=CUDA_TOLERANCE[inputs[0].dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk", MMA_SIZES)
@pytest.mark.parametrize("d", [64, 80, 96, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_mma_sizes(sq, sk, d, causal, dtype):
    check_mma(make_inputs((3, 2, sq, d), 2, sk, dtype=dtype), causal=causal)
    check_mma(make_inputs((1, 3, sq, d), 3, sk, dtype=dtype), causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk", [(1, 1), (77, 77), (197, 300), (300, 77)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_mma_head_size_32(sq, sk, causal, dtype):
    check_mma(make_inputs((2, 3, sq, 32), 3, sk, dtype=dtype), causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("rank", [3, 4])
def test_cuda_mma_grouped_query_and_scale(d, causal, dtype, rank):
    shape = (3, 8, 77, d) if rank == 4 else (8, 77, d)
    inputs = make_inputs(shape, 2, 197, dtype=dtype)
    check_mma(inputs, causal=causal)
    check_mma(inputs, causal=causal, scale=0.3)


MMA_MASKS = [  # for q [3, 4, Sq=77, D] and Sk=197
    ("bool", (3, 1, 1, 197)),  # padding mask
    ("bool", (77, 197)),
    ("bool", (3, 4, 77, 197)),
    ("bool", (77, 1)),  # broadcast over the keys: one value per row
    ("float", (3, 1, 1, 197)),
    ("float", (77, 197)),
    ("float", (197,)),
    ("float", (4, 1, 197)),
    ("float", (3, 4, 77, 197)),
    ("float", (3, 1, 77, 1)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,mshape", MMA_MASKS)
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("hkv", [4, 2])
def test_cuda_mma_mask(kind, mshape, d, dtype, hkv):
    check_mma(make_inputs((3, 4, 77, d), hkv, 197, mask=(kind, mshape), dtype=dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_mma_fully_masked_rows(kind, d, dtype):
    # Sk = 150: three key tiles. Row 1 of (0, 0) sees no key (zeros); row 2 of (1, 0) sees only
    # keys of the last tile (its running max stays -inf through two tiles, then becomes finite).
    inputs = make_inputs(
        (2, 2, 70, d), 2, 150, mask=(kind, (2, 1, 70, 150)), dtype=dtype, fully_masked_rows=True
    )
    keep = inputs[3] if kind == "bool" else inputs[3] != float("-inf")
    keep[0, 0, 1] = False
    keep[1, 0, 2, :128] = False
    keep[1, 0, 2, 140] = True
    if kind == "float":
        inputs[3] = torch.where(keep, inputs[3], torch.full_like(inputs[3], float("-inf")))
    got = run_layer(build(), inputs, "cuda")
    dead = ~keep.any(-1).expand(2, 2, 70)
    assert dead[0, :, 1].all() and not dead[1, :, 2].any()
    assert torch.equal(got[dead], torch.zeros_like(got[dead]))
    want = torch_attention(inputs)  # its fully masked rows are not compared
    torch.testing.assert_close(got[~dead].double(), want[~dead], **CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("mask", [None, ("bool", (3, 1, 1, 197)), ("float", (77, 197))])
def test_cuda_mma_dynamic_batch(d, dtype, mask):
    inputs = make_inputs((3, 8, 77, d), 2, 197, mask=mask, dtype=dtype)
    check_mma(inputs, causal=mask is None, dynamic=True)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 80, 128])
def test_cuda_mma_many_heads_and_long_keys(d):
    # More blocks than one wave, 33 key tiles per block with a partial last one.
    check_mma(make_inputs((4, 16, 130, d), 4, 2049, dtype=torch.float16))
    check_mma(make_inputs((4, 16, 130, d), 4, 2049, dtype=torch.float16), causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_mma_large_scores(dtype):
    # Scores far from 0 (|s| up to ~50): exp2 of scores minus the running max must stay in range.
    q, k, v = make_inputs((2, 2, 77, 64), 2, 197, dtype=dtype)
    check_mma([(q.float() * 12).to(dtype), k, v])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_tensor_core_dynamic_grouped_query(dtype):
    check_mma(make_inputs((3, 8, 70, 64), 2, 90, dtype=dtype), causal=True, dynamic=True)


# --- layout "bshd" and packed_attention -----------------------------------------------------------
# The same problems as above, laid out as the projections write them: bshd q/k/v/out are the bhsd
# tensors transposed (1, 2); packed_attention reads q, k, v from qkv[:, :, 0..2] of one
# [B, S, 3, H, D] tensor. The oracle is the bhsd SDPA on the same values, so the tolerances are
# the bhsd ones (the kernels differ only in the strides they address).


def bshd(t):
    return t.transpose(1, 2).contiguous()


def check_bshd(target, inputs, causal=False, scale=None, dynamic=False, tolerance=None):
    def add(net, q, k, v, mask=None):
        return net.add_attention(
            q, k, v, mask, causal=causal, scale=scale, name="attn", layout="bshd"
        )

    laid_out = [bshd(t) for t in inputs[:3]] + inputs[3:]
    if dynamic:
        got = run_dynamic_batch(add, laid_out, target)
    else:
        got = run_layer(add, laid_out, target)
    want = torch_attention(inputs, causal, scale).transpose(1, 2)
    assert got.dtype == inputs[0].dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **(tolerance or TOLERANCE[inputs[0].dtype]))


def make_packed(b, s, h, d, mask=None, dtype=torch.float32):
    """qkv [B, S, 3, H, D] (and a mask as make_inputs draws it)."""
    inputs = [torch.randn(b, s, 3, h, d).to(dtype)]
    if mask is not None:
        inputs.append(make_mask(*mask, dtype=dtype))
    return inputs


def check_packed(
    target, inputs, causal=False, scale=None, dynamic=False, tolerance=None, layout="bshd"
):
    """layout "sbhd": the same problem with qkv given sequence-first, [S, B, 3, H, D]; the output
    comes back [S, B, H, D]."""
    seq_first = layout == "sbhd"

    def add(net, qkv, mask=None):
        return net.add_packed_attention(
            qkv, mask, causal=causal, scale=scale, name="attn", layout=layout
        )

    qkv = inputs[0]
    laid_out = [qkv.transpose(0, 1).contiguous()] + inputs[1:] if seq_first else inputs
    if dynamic:
        got = run_dynamic_batch(add, laid_out, target, batched=1)
    else:
        got = run_layer(add, laid_out, target)
    if seq_first:
        got = got.transpose(0, 1)
    per_head = [qkv[:, :, i].transpose(1, 2) for i in range(3)]
    want = torch_attention(per_head + inputs[1:], causal, scale).transpose(1, 2)
    assert got.dtype == qkv.dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **(tolerance or TOLERANCE[qkv.dtype]))


@pytest.mark.parametrize("sq,sk,d", REF_SIZES)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_bshd(sq, sk, d, causal):
    check_bshd("cpu", make_inputs((2, 3, sq, d), 3, sk), causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_bshd_grouped_query_value_size_scale(causal):
    check_bshd("cpu", make_inputs((2, 8, 7, 16), 2, 9, dv=24), causal=causal, scale=0.3)


@pytest.mark.parametrize("kind,mshape", MASKS)
@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_reference_bshd_mask(kind, mshape, dtype):
    check_bshd("cpu", make_inputs((2, 4, 7, 16), 4, 9, mask=(kind, mshape), dtype=dtype))


@pytest.mark.parametrize("mask", DYNAMIC_MASKS)
def test_reference_bshd_dynamic_batch(mask):
    check_bshd("cpu", make_inputs((3, 4, 7, 16), 2, 9, mask=mask), dynamic=True)


def test_reference_bshd_empty():
    check_bshd("cpu", make_inputs((2, 2, 7, 16), 2, 0))
    check_bshd("cpu", make_inputs((0, 2, 7, 16), 2, 9))


PACKED_MASKS = [  # for [B=2, H=4, S=7, S=7] scores
    ("bool", (2, 1, 1, 7)),
    ("bool", (7, 7)),
    ("float", (2, 4, 7, 7)),
    ("float", (7,)),
]


@pytest.mark.parametrize("s,d", [(1, 16), (7, 16), (77, 24), (33, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_packed(s, d, causal):
    check_packed("cpu", make_packed(2, s, 3, d), causal=causal)


@pytest.mark.parametrize("kind,mshape", PACKED_MASKS)
@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_reference_packed_mask(kind, mshape, dtype):
    check_packed("cpu", make_packed(2, 7, 4, 16, mask=(kind, mshape), dtype=dtype))


def test_reference_packed_scale_and_dynamic_batch():
    check_packed("cpu", make_packed(2, 9, 2, 16), scale=0.25)
    check_packed("cpu", make_packed(3, 9, 2, 16), causal=True, dynamic=True)
    check_packed("cpu", make_packed(3, 7, 4, 16, mask=("bool", (3, 1, 1, 7))), dynamic=True)


@pytest.mark.parametrize("b,s", [(2, 7), (1, 9), (3, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_packed_sequence_first(b, s, causal):
    check_packed("cpu", make_packed(b, s, 3, 16), causal=causal, layout="sbhd")
    mask = ("float", (b, 1, s, s))
    check_packed("cpu", make_packed(b, s, 2, 8, mask=mask), layout="sbhd")


def test_reference_packed_empty():
    check_packed("cpu", make_packed(0, 7, 2, 16))
    check_packed("cpu", make_packed(2, 0, 2, 16))


def test_network_records_layout_and_packed():
    net = kiln.Network()
    q = net.add_input("q", "float32", (1, 3, 2, 4))
    k = net.add_input("k", "float32", (1, 5, 2, 4))
    v = net.add_input("v", "float32", (1, 5, 2, 6))
    layer = net.add_attention(q, k, v, layout="bshd", name="sdpa")
    assert layer.output.shape == (1, 3, 2, 6)
    assert net.layers[-1][4] == {"causal": 0, "layout": "bshd"}
    qkv = net.add_input("qkv", "float16", (-1, 7, 3, 2, 8))
    packed = net.add_packed_attention(qkv, causal=True, scale=0.5, name="packed")
    assert packed.output.shape == (-1, 7, 2, 8) and packed.output.dtype == "float16"
    assert net.layers[-1][1] == "packed_attention"
    assert net.layers[-1][4] == {"causal": 1, "scale": 0.5}
    qkv = net.add_input("qkv_sb", "float32", (7, -1, 3, 2, 8))
    packed = net.add_packed_attention(qkv, layout="sbhd", name="packed_sb")
    assert packed.output.shape == (7, -1, 2, 8)
    assert net.layers[-1][4] == {"causal": 0, "layout": "sbhd"}


QB, KB, VB = (2, 5, 8, 16), (2, 7, 2, 16), (2, 7, 2, 32)  # bshd


@pytest.mark.parametrize(
    "shapes,attrs,match",
    [
        ([QB, KB, VB], {"layout": "bsdh"}, 'layout must be "bhsd"'),
        (
            [(5, 8, 16), (7, 2, 16), (7, 2, 32)],
            {"layout": "bshd"},
            "needs q, k and v of one rank >= 4",
        ),
        ([QB, (2, 7, 2, 8), VB], {"layout": "bshd"}, "layout bshd.*same head size"),
        ([QB, KB, (2, 6, 2, 32)], {"layout": "bshd"}, "layout bshd.*same sequence length"),
        ([QB, (2, 7, 3, 16), (2, 7, 3, 32)], {"layout": "bshd"}, "multiple of key/value heads"),
        ([QB, KB, VB, (5, 8, 7)], {"layout": "bshd"}, "does not broadcast"),
    ],
)
def test_bshd_errors_name_the_layer(shapes, attrs, match):
    with pytest.raises(kiln.KilnError, match=rf"layer 'attn' \(attention\).*{match}"):
        add_to_network(shapes, None, attrs)


def test_bshd_mask_keeps_its_bhsd_meaning():
    # [B, Hq, Sq, Sk] = [2, 8, 5, 7] for bshd q [2, 5, 8, 16]: a per-head mask is accepted.
    layer = add_to_network([QB, KB, VB, (8, 5, 7)], ["float32"] * 3 + ["bool"], {"layout": "bshd"})
    assert layer.output.shape == (2, 5, 8, 32)


@pytest.mark.parametrize(
    "shapes,dtypes,attrs,match",
    [
        ([(2, 7, 3, 4, 16)], ["int32"], None, "floating point"),
        ([(2, 7, 2, 4, 16)], None, None, r"qkv must be \[B, S, 3, H, D\]"),
        ([(7, 3, 4, 16)], None, None, r"qkv must be \[B, S, 3, H, D\]"),
        ([(2, 7, 3, 4, 16), (2, 4, 7, 8)], None, None, "does not broadcast"),
        ([(2, 7, 3, 4, 16), (7, 7)], None, {"causal": 1}, "causal=1 together"),
        ([(2, 7, 3, 4, 16)], None, {"layout": "bhsd"}, 'layout must be "bshd".*or "sbhd"'),
        ([(7, 2, 2, 4, 16)], None, {"layout": "sbhd"}, r"qkv must be \[S, B, 3, H, D\]"),
    ],
)
def test_packed_errors_name_the_layer(shapes, dtypes, attrs, match):
    net = kiln.Network()
    dtypes = dtypes or ["float32"] * len(shapes)
    ins = [
        net.add_input(f"in{i}", dt, s) for i, (s, dt) in enumerate(zip(shapes, dtypes, strict=True))
    ]
    if len(ins) == 2 and dtypes[1] == "float32" and len(shapes[1]) == 2:
        ins[1] = net.add_input("m", "bool", shapes[1])
    with pytest.raises(kiln.KilnError, match=rf"layer 'attn' \(packed_attention\).*{match}"):
        net.add_layer("packed_attention", ins, attrs or {}, name="attn")


# CUDA: both kernels (head size 64 in float16/bfloat16 takes the tensor-core path, whose 16-byte
# loads then run on the strided rows of bshd and packed tensors), tails (77, 130), masks, causal,
# grouped-query, dynamic batch.
GPU_LAYOUT_D = [16, 64, 80]


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk", [(1, 1), (77, 77), (128, 128), (130, 257)])
@pytest.mark.parametrize("d", GPU_LAYOUT_D)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_bshd(sq, sk, d, causal, dtype):
    inputs = make_inputs((2, 3, sq, d), 3, sk, dtype=dtype)
    check_bshd("cuda", inputs, causal=causal, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("kind,mshape", GPU_MASKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hkv", [4, 2])
@pytest.mark.parametrize("d", [64, 80])
def test_cuda_bshd_mask(kind, mshape, dtype, hkv, d):
    inputs = make_inputs((2, 4, 130, d), hkv, 257, mask=(kind, mshape), dtype=dtype)
    check_bshd("cuda", inputs, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 64])
def test_cuda_bshd_dynamic_batch(dtype, d):
    inputs = make_inputs((3, 8, 70, d), 2, 90, mask=("bool", (3, 1, 1, 90)), dtype=dtype)
    check_bshd("cuda", inputs, dynamic=True, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("s", [1, 17, 77, 128, 197])
@pytest.mark.parametrize("d", GPU_LAYOUT_D)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_packed(s, d, causal, dtype):
    check_packed(
        "cuda",
        make_packed(2, s, 12, d, dtype=dtype),
        causal=causal,
        tolerance=CUDA_TOLERANCE[dtype],
    )


@pytest.mark.gpu
@pytest.mark.parametrize("b,s", [(1, 197), (2, 77), (3, 128)])
@pytest.mark.parametrize("d", [64, 80])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_packed_sequence_first(b, s, d, dtype):
    # torch's MultiheadAttention order (ViT): the batch stride is one token, the sequence stride
    # B tokens.
    inputs = make_packed(b, s, 12, d, dtype=dtype)
    check_packed("cuda", inputs, layout="sbhd", tolerance=CUDA_TOLERANCE[dtype])
    check_packed("cuda", inputs, causal=True, layout="sbhd", tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "kind,mshape", [("bool", (2, 1, 1, 77)), ("float", (77, 77)), ("float", (2, 4, 77, 77))]
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 80])
def test_cuda_packed_mask(kind, mshape, dtype, d):
    inputs = make_packed(2, 77, 4, d, mask=(kind, mshape), dtype=dtype)
    check_packed("cuda", inputs, tolerance=CUDA_TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_packed_dynamic_batch_and_scale(dtype):
    inputs = make_packed(3, 77, 4, 64, mask=("bool", (3, 1, 1, 77)), dtype=dtype)
    check_packed("cuda", inputs, dynamic=True, tolerance=CUDA_TOLERANCE[dtype])
    check_packed(
        "cuda", inputs[:1], causal=True, scale=0.05, dynamic=True, tolerance=CUDA_TOLERANCE[dtype]
    )
