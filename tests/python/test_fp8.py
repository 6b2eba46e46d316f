"""FP8 (float8 e4m3) through kiln.compile: calibration inserts kiln::fake_quantize_fp8 before the
linear layers of a really trained transformer encoder (test_calibration's, trained here on a
synthetic sequence task), which must stay within 1% top-1 of FP32; on a GPU with FP8 tensor cores
those layers run as FP8 GEMMs (cuBLASLt), and their predictions agree with the reference
backend's fake-quantized engine. Also the fake-quantize op against its engine layer (bit for bit)
and the FP8 errors."""

import pytest
import torch
from layer_util import DEVICES, build_plan, run_plan
from test_calibration import (
    TinyEncoder,
    accuracy,
    digits,  # noqa: F401 (a fixture: the trained digits CNN)
    digits_network,
    sequences,
    trained_encoder,
)

import kiln
from kiln.quant_ops import fake_quantize_fp8, float32_reciprocal

FP8 = torch.float8_e4m3fn


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


class FakeQuant(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.ops.kiln.fake_quantize_fp8(x, self.scale, float32_reciprocal(self.scale)) * 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fake_quantize_fp8_layer_matches_the_torch_op_bit_for_bit(device, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 257, generator=g) * 3).to(dtype)
    x[0, :4] = torch.tensor([1e6, -1e6, 0.0, -0.0])  # saturation and signed zeros
    x[1, :3] = torch.tensor([448 * 0.01 * 1.0625, 1e-9, -3e-5])  # a tie, subnormal region
    model = FakeQuant(0.01).eval()
    expected = model(x)
    compiled = kiln.compile(model, [x], device=device, require_full_compilation=True)
    got = compiled(x.to(device)).cpu()
    assert torch.equal(
        got.view(torch.int16 if dtype == torch.float16 else torch.int32),
        expected.view(torch.int16 if dtype == torch.float16 else torch.int32),
    )


@pytest.fixture(scope="module")
def encoder():
    model, g = trained_encoder()
    test, labels = sequences(1000, g)
    batches = [(sequences(64, g)[0],) for _ in range(8)]
    return model, test, labels, batches


def fp8_compile(model, batches, device, precisions=(FP8,), algorithm="minmax"):
    spec = kiln.Input(
        min_shape=(1, 12), opt_shape=(64, 12), max_shape=(1000, 12), dtype=torch.int64
    )
    return kiln.compile(
        model,
        [spec],
        enabled_precisions=set(precisions),
        calibrator=kiln.Calibrator(batches, algorithm=algorithm),
        device=device,
        require_full_compilation=True,
    )


@pytest.mark.parametrize("algorithm", ["minmax", "percentile", "entropy"])
def test_fp8_ptq_transformer_encoder_stays_within_one_percent_on_the_reference(encoder, algorithm):
    model, test, labels, batches = encoder
    fp32 = accuracy(model, test, labels)
    assert fp32 > 0.9, fp32
    compiled = fp8_compile(model, batches, "cpu", algorithm=algorithm)
    layers = [la for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
    fq = [la for la in layers if la.op == "fake_quantize" and la.attrs.get("format") == "e4m3"]
    assert len(fq) >= 4, [la.op for la in layers]  # qkv, proj, ff1, ff2 and out inputs
    assert accuracy(compiled, test, labels) >= fp32 - 0.01, algorithm


@pytest.mark.gpu
def test_fp8_gemms_on_the_gpu_agree_with_the_reference_and_stay_within_one_percent(encoder):
    if not _fp8_gpu():
        pytest.skip("FP8 GEMMs need a GPU of compute capability 8.9 or newer")
    model, test, labels, batches = encoder
    fp32 = accuracy(model, test, labels)
    reference = fp8_compile(model, batches, "cpu")
    half = TinyEncoder()
    half.load_state_dict(model.state_dict())
    half = half.half().eval().cuda()
    gpu_batches = [(b[0].cuda(),) for b in batches]
    compiled = fp8_compile(half, gpu_batches, "cuda", precisions=(FP8, torch.float16))
    layers = [la for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
    fp8_gemms = [la for la in layers if la.op == "fully_connected" and "out_dtype" in la.attrs]
    # qkv, proj, ff1, ff2 have K and N multiples of 16; the 3-class head does not.
    assert len(fp8_gemms) >= 3, [(la.op, la.attrs) for la in layers]
    assert "FP8 GEMMs" in kiln.inspect(kiln.plans(compiled)[0]).text()
    with torch.no_grad():
        gpu = compiled(test.cuda()).float().cpu().argmax(1)
        ref = reference(test).argmax(1)
    assert (gpu == ref).float().mean().item() >= 0.99
    assert (gpu == labels).float().mean().item() >= fp32 - 0.01


def test_fp8_errors(encoder):
    model, test, _, batches = encoder
    spec = kiln.Input(
        min_shape=(1, 12), opt_shape=(64, 12), max_shape=(1000, 12), dtype=torch.int64
    )
    with pytest.raises(kiln.KilnError, match="FP8 needs a calibrator"):
        kiln.compile(model, [spec], enabled_precisions={FP8}, device="cpu")
    with pytest.raises(ValueError, match="choose one"):
        kiln.compile(
            model,
            [spec],
            enabled_precisions={FP8, torch.int8},
            calibrator=kiln.Calibrator(batches),
            device="cpu",
        )
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)).eval()
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(kiln.KilnError, match="no linear layer"):
        kiln.compile(
            conv, [x], enabled_precisions={FP8}, calibrator=kiln.Calibrator([(x,)]), device="cpu"
        )


def test_fp8_weight_grid_is_per_tensor_e4m3():
    w = torch.randn(16, 32) * 0.2
    scale = float(w.abs().max()) / 448
    q = fake_quantize_fp8(w, scale, float32_reciprocal(scale))
    steps = (q / scale).to(FP8).float() * scale
    assert torch.equal(steps, q)  # already on the grid
    assert float(q.abs().max()) == pytest.approx(float(w.abs().max()), rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_native_api_fp8_calibration_stays_within_one_percent(digits, device, tmp_path):  # noqa: F811
    # The network API's FP8: BuilderConfig(precisions=[..., "fp8"], calibrator=...) fake-quantizes
    # the fully_connected inputs and weights per tensor to e4m3 (convolutions stay); with FP16 on
    # an sm_89+ GPU the builder makes FP8 GEMMs of them (fc1: K 512, N 64; fc2's N = 10 is not a
    # multiple of 16 and keeps its fake quantization).
    if device == "cuda" and not _fp8_gpu():
        pytest.skip("FP8 GEMMs need a GPU of compute capability 8.9 or newer")
    model, train, test, labels = digits
    net = digits_network(model)
    cache = tmp_path / "fp8.calib"
    calibrator = kiln.Calibrator(
        [(b,) for b in train[:512].split(64)], algorithm="minmax", cache_file=cache
    )
    precisions = ["fp16", "fp8"] if device == "cuda" else ["fp32", "fp8"]
    config = kiln.BuilderConfig(device=device, precisions=precisions, calibrator=calibrator)
    config.add_optimization_profile({"x": ([1, 1, 8, 8], [64, 1, 8, 8], [512, 1, 8, 8])})
    plan = kiln.Builder().build(net, config)
    layers = [(la["op"], dict(la["attrs"])) for la in plan.layers()]
    if device == "cuda":
        assert sum(op == "fully_connected" and "out_dtype" in a for op, a in layers) == 1, layers
    else:
        fq = [a for op, a in layers if op == "fake_quantize"]
        assert len(fq) == 2 and all(a["format"] == "e4m3" for a in fq), layers
    fp32 = accuracy(model, test, labels)
    got = run_plan(plan, {"x": test}, device)["y"].float().argmax(1)
    assert (got == labels).float().mean().item() >= fp32 - 0.01
    assert len(cache.read_text().splitlines()) == 2 + 2


@pytest.mark.parametrize("spelling", ["fp8", "float8_e4m3fn", FP8], ids=str)
def test_fp8_precision_spellings(spelling):
    from kiln import dtypes

    assert dtypes.precision_name(spelling) == "fp8"
    assert kiln.BuilderConfig(precisions=[spelling]).precisions == ["fp32", "fp8"]


def test_attention_writing_float8_on_the_reference_backend():
    # packed_attention with output_inv_scale (fold_quantize_copies sets it where the FP8 output
    # projection reads the attention): e4m3(o * inv) of o rounded to float16, as torch computes it;
    # kiln inspect lists the layer with the scale.
    net = kiln.Network()
    qkv = net.add_input("qkv", "float16", [2, 5, 3, 2, 32])
    attn = net.add_layer("packed_attention", [qkv], {"output_inv_scale": 32.0}, name="attn")
    # dequantized with scale 1 (numpy, the host path, has no float8): the e4m3 values themselves
    one = net.add_constant(torch.ones(()), name="one")
    net.mark_output(net.add_layer("dequantize", [attn, one], {"format": "e4m3"}), "y")
    plan = build_plan(net, level=0)
    x = torch.randn(2, 5, 3, 2, 32).half()
    got = run_plan(plan, {"qkv": x})["y"]
    q, k, v = (x[:, :, i].transpose(1, 2).double() for i in range(3))  # [B, H, S, D]
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, S, H, D]
    want = (o.half().float() * 32).to(FP8).float()
    assert torch.equal(got, want)
    assert "attn: -> float8 e4m3 (scale 0.03125)" in kiln.inspect(plan).text()


def test_a_float8_engine_output_is_refused_with_what_to_do():
    net = kiln.Network()
    qkv = net.add_input("qkv", "float16", [1, 4, 3, 2, 32])
    net.mark_output(net.add_layer("packed_attention", [qkv], {"output_inv_scale": 8.0}), "y")
    plan = build_plan(net, level=0)
    with pytest.raises(kiln.KilnError, match="output 'y' is float8_e4m3fn.*dequantize"):
        run_plan(plan, {"qkv": torch.randn(1, 4, 3, 2, 32).half()})
