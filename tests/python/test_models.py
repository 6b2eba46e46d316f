"""The model zoo (bench/models.py) through kiln.compile: one engine, nothing in PyTorch.

CPU (CI): every model at its real config is partitioned (dry_run) in FP32 and after
``model.half()``; reduced configs (2 layers, small hidden sizes, vision at 64x64) run on the
reference backend against eager FP32, the transformers at several dynamic (batch, sequence)
shapes. GPU: full configs on CUDA in FP32 (cosine >= 0.9999), after ``model.half()`` and with
``enabled_precisions={torch.float16}`` on the FP32 model (cosine >= 0.999 vs eager FP32). The
eager FP32 truth is strict FP32 (TF32 off, ``models.torch_tf32(False)``): torch's default lets
cuDNN use TF32, which alone costs ResNet-50 the 0.9999 cosine.

Tolerances: the reference backend computes in float32 like eager, so reduced FP32 models agree
to float32 rounding (max abs 1e-4 on outputs of magnitude ~1, layer norms keep them there);
FP16 rounds every tensor to 11 bits, so max abs is bounded at 2e-2 for 2-layer models and the
cosine (which tolerates per-element rounding) carries the check.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import runtime as rt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import models  # noqa: E402

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

TRANSFORMERS = [n for n, e in models.MODELS.items() if e.kind == "transformer"]
VISION = [n for n, e in models.MODELS.items() if e.kind == "vision"]


def token_spec(batch=(1, 2, 4), seq=(4, 16, 64)):
    return kiln.Input(
        min_shape=(batch[0], seq[0]),
        opt_shape=(batch[1], seq[1]),
        max_shape=(batch[2], seq[2]),
        dtype=torch.int64,
    )


def specs_for(entry, example):
    if entry.kind == "transformer":
        return [token_spec(seq=(8, example.shape[1], 512))]
    return [example]


def cosine(a, b):
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.mark.parametrize("name", list(models.MODELS))
def test_real_config_is_one_engine_fp32_and_half(name):
    entry = models.get(name)
    model = entry.build()
    (x,) = entry.inputs(1, torch.device("cpu"))
    for half in (False, True):
        if half:
            model.half()
            x = x.half() if x.is_floating_point() else x
        report = kiln.compile(model, specs_for(entry, x), device="cpu", dry_run=True)
        assert report.num_engines == 1 and not report.fallbacks, (name, half, str(report))


# ---- reduced configs, numerics on the reference backend ------------------------------------


def small_model(name):
    torch.manual_seed(0)
    tf = transformers
    if name == "bert":
        config = tf.BertConfig(
            vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128,
        )  # fmt: skip
        return models.LastHiddenState(tf.BertModel(config, add_pooling_layer=False)).eval()
    if name == "gpt2":
        config = tf.GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4, use_cache=False)
        config.bos_token_id = config.eos_token_id = 0
        return models.LastHiddenState(tf.GPT2Model(config)).eval()
    if name == "t5_encoder":
        config = tf.T5Config(
            vocab_size=500, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16
        )
        return models.LastHiddenState(tf.T5EncoderModel(config)).eval()
    if name == "vit_b_16":
        vit = torchvision.models.VisionTransformer(
            image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
        )
        vit.heads = torch.nn.Identity()  # torchvision zero-initializes the head: compare features
        return vit.eval()
    cnn = getattr(torchvision.models, name)(weights=None)
    cnn.classifier = (
        torch.nn.Identity()
    )  # the random head squashes logits to ~1e-16: compare features
    return cnn.eval()


def check_against_eager(compiled, model, x, half, cos_min, atol):
    with torch.no_grad():
        want = model.float()(x)
        if half:
            model.half()
        got = compiled(x if not x.is_floating_point() or not half else x.half()).float()
    cos = cosine(got, want)
    err = (got - want).abs().max().item()
    assert cos >= cos_min and err <= atol, (tuple(x.shape), cos, err)


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "half"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_small_transformer_dynamic_batch_and_sequence(name, half):
    model = small_model(name)
    if half:
        model.half()
    compiled = kiln.compile(model, [token_spec()], device="cpu", require_full_compilation=True)
    assert compiled.report.num_engines == 1
    g = torch.Generator().manual_seed(3)
    for shape in [(1, 4), (2, 16), (3, 37)]:
        ids = torch.randint(0, 500, shape, generator=g)
        check_against_eager(
            compiled, model, ids, half, 0.999 if half else 0.99999, 2e-2 if half else 1e-4
        )


@pytest.mark.parametrize("name", ["vit_b_16", "mobilenet_v3_large"])
def test_small_vision_model(name):
    model = small_model(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    compiled = kiln.compile(model, [x], device="cpu", require_full_compilation=True)
    assert compiled.report.num_engines == 1
    check_against_eager(compiled, model, x, False, 0.99999, 1e-3)


# ---- GPU: full configs on CUDA --------------------------------------------------------------


def run_gpu(name, mode):
    entry = models.get(name)
    model = entry.build().cuda()
    (x,) = entry.inputs(4, torch.device("cuda"))
    with torch.no_grad(), models.torch_tf32(False):  # strict FP32 truth, as Kiln's FP32
        want = model(x)
    kwargs = {}
    if mode == "half":
        model.half()
        x = x.half() if x.is_floating_point() else x
    elif mode == "fp16_precision":
        kwargs["enabled_precisions"] = {torch.float16}
    specs = specs_for(entry, x)
    if entry.kind == "transformer":
        specs = [token_spec(batch=(1, 4, 8), seq=(8, x.shape[1], 512))]
    compiled = kiln.compile(model, specs, device="cuda", require_full_compilation=True, **kwargs)
    assert compiled.report.num_engines == 1
    shapes = [tuple(x.shape)]
    if entry.kind == "transformer":
        shapes += [(1, 8), (8, 200)]
    for shape in shapes:
        xs = x if shape == tuple(x.shape) else torch.randint(0, 1000, shape, device="cuda")
        with torch.no_grad():
            with models.torch_tf32(False):
                ref = want if xs is x else model.float()(xs)
            if mode == "half":
                model.half()
            got = compiled(xs).float()
        cos = cosine(got, ref)
        err = (got - ref).abs().max().item()
        print(f"{name} {mode} {shape}: cosine {cos:.6f} max abs {err:.3e}")
        assert cos >= (0.9999 if mode == "fp32" else 0.999), (name, mode, shape, cos, err)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fp32", "half", "fp16_precision"])
@pytest.mark.parametrize("name", list(models.MODELS))
def test_full_model_on_cuda(name, mode):
    run_gpu(name, mode)
