"""The roofline (kiln.roofline, Inspection.costs/profile/roofline, `kiln inspect --profile`): the
cost model's FLOPs and bytes per layer, checked by hand on small layers and against torch's own
FLOP counter on whole models, and the report that sorts layers by time lost."""

import subprocess
import sys

import numpy as np
import pytest
from layer_util import build_plan

import kiln
from kiln.roofline import Peaks, attainable_ms, measure_peaks, rates

torch = pytest.importorskip("torch")


def _costs(net, shapes=None):
    info = kiln.inspect(build_plan(net, level=0)).costs(shapes)
    return {la.name: (la.flops, la.bytes) for la in info.layers}, info


def test_gemm_convolution_and_attention_costs_by_hand():
    rng = np.random.default_rng(0)
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 4))
    w = net.add_constant(rng.standard_normal((3, 4)).astype(np.float32))
    b = net.add_constant(rng.standard_normal(3).astype(np.float32))
    fc = net.add_layer("fully_connected", [x, w, b], {}, name="fc")
    net.mark_output(fc, "fc_y")
    a = net.add_input("a", "float32", (5, 7))  # a^T [7, 5] @ c [5, 6]
    c = net.add_input("c", "float32", (5, 6))
    net.mark_output(net.add_layer("matmul", [a, c], {"transpose_a": 1}, name="mm"), "mm_y")
    img = net.add_input("img", "float32", (1, 2, 5, 5))
    k = net.add_constant(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    net.mark_output(net.add_layer("convolution", [img, k], {"pads": [1, 1]}, name="conv"), "conv_y")
    q, kk, v = (net.add_input(n, "float32", (1, 2, 4, 8)) for n in ("q", "k", "v"))
    net.mark_output(net.add_layer("attention", [q, kk, v], {}, name="att"), "att_y")
    net.mark_output(net.add_layer("attention", [q, kk, v], {"causal": 1}, name="causal"), "c_y")
    net.mark_output(net.add_activation(x, "relu", name="relu"), "relu_y")
    dk = net.add_constant(rng.standard_normal((2, 4, 3, 3)).astype(np.float32))  # [C in, K, kh, kw]
    small = net.add_input("small", "float32", (1, 2, 3, 3))
    net.mark_output(net.add_layer("deconvolution", [small, dk], {}, name="deconv"), "deconv_y")
    qkv = net.add_input("qkv", "float32", (1, 4, 3, 2, 8))  # [B, S, 3, H, D]
    net.mark_output(net.add_layer("packed_attention", [qkv], {}, name="packed"), "packed_y")
    costs, _ = _costs(net)
    assert costs["fc"] == (2 * 2 * 3 * 4, 4 * (8 + 12 + 3 + 6))
    assert costs["mm"] == (2 * 7 * 6 * 5, 4 * (35 + 30 + 42))
    assert costs["conv"] == (2 * 75 * 18, 4 * (50 + 54 + 75))
    assert costs["att"] == (2 * 2 * 4 * 4 * (8 + 8), 4 * 4 * 64)
    assert costs["causal"][0] == costs["att"][0] / 2
    assert costs["relu"] == (8, 4 * 16)  # one operation per output element
    # Each input element meets K * kh * kw weights: 2 * 18 * 36; the output is [1, 4, 5, 5].
    assert costs["deconv"] == (2 * 18 * 36, 4 * (18 + 72 + 100))
    assert costs["packed"] == (2 * 1 * 2 * 4 * 4 * (8 + 8), 4 * (192 + 64))


def test_costs_follow_the_shapes_of_a_dynamic_batch():
    net = kiln.Network()
    x = net.add_input("x", "float16", (-1, 16))
    w = net.add_constant(np.ones((8, 16), np.float16))
    net.mark_output(net.add_layer("fully_connected", [x, w], {}, name="fc"), "y")
    plan = build_plan(net, level=0, profile={"x": ((1, 16), (4, 16), (8, 16))})
    info = kiln.inspect(plan)
    assert info.costs().layers[0].flops == 2 * 4 * 8 * 16  # the profile's opt shape
    assert info.costs({"x": (8, 16)}).layers[0].flops == 2 * 8 * 8 * 16
    assert info.layers[0].bytes == 2 * (8 * 16 + 8 * 16 + 8 * 8)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (7, 2)])
def test_zero_padded_kernels_count_the_models_products(kernel, stride):
    # A half convolution over 3 channels runs on 8 zero-padded ones (channels last), a 7x7
    # stride-2 stem as a 4x4 convolution over 16 folded channels (space_to_depth_stems): the cost
    # model counts the layer's own 3 * k * k products per output, not the padded kernel's.
    net = kiln.Network()
    x = net.add_input("x", "float16", (2, 3, 16, 16))
    w = torch.randn(8, 3, kernel, kernel).half()
    y = net.add_convolution(x, w, stride=stride, padding=kernel // 2, name="conv")
    net.mark_output(y, "y")
    plan = build_plan(net)
    info = kiln.inspect(plan).costs()
    (conv,) = [la for la in info.layers if la.op == "convolution"]
    out = 16 // stride
    assert conv.flops == 2 * (2 * 8 * out * out) * 3 * kernel * kernel
    padded = [la for la in plan.layers() if la["op"] == "convolution"][0]["inputs"][1][2]
    assert np.prod(padded[1:]) > 3 * kernel * kernel, padded  # the kernel was padded


def _torch_flops(model, *args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    return float(counter.get_total_flops())


def test_resnet18_flops_match_torchs_flop_counter():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    compiled = kiln.compile(model, [x], device="cpu", cache_dir=False)
    (plan,) = kiln.plans(compiled)
    info = kiln.inspect(plan).costs()
    want = _torch_flops(model, x)  # convolutions and the classifier: 2 per multiply-add
    gemm = sum(la.flops for la in info.layers if la.op in ("convolution", "fully_connected"))
    assert gemm == pytest.approx(want, rel=1e-3)
    # The rest (pooling, residual adds, ...) adds an operation per output element: a fraction of
    # a percent. The bytes include every weight once (11.7M float32 parameters).
    assert info.total_flops == pytest.approx(want, rel=0.01)
    assert info.total_bytes > 4 * 11.6e6


def test_bert_attention_flops_match_torchs_flop_counter():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 1000, (2, 32))
    compiled = kiln.compile(model, [ids], device="cpu", cache_dir=False)
    info = kiln.inspect(kiln.plans(compiled)[0]).costs()
    want = _torch_flops(model, ids)
    gemm = sum(la.flops for la in info.layers if la.op in ("fully_connected", "matmul"))
    attention = sum(la.flops for la in info.layers if "attention" in la.op)
    # Per layer q @ k^T and p @ v: 2 * B * H * S * S * (D + Dv) = 2 * 2 * 4 * 32 * 32 * 32.
    assert attention == 2 * (2 * 2 * 4 * 32 * 32 * 32)
    # torch's counter counts the projections, the FFN and the pooler; its CPU SDPA kernel has no
    # FLOP formula registered (it counts 0 there), a CUDA one has.
    assert gemm == pytest.approx(want, rel=1e-3) or gemm + attention == pytest.approx(
        want, rel=1e-3
    )


def test_profile_reports_rates_and_the_roofline_sorts_by_time_lost(tmp_path):
    rng = np.random.default_rng(1)
    net = kiln.Network()
    x = net.add_input("x", "float32", (64, 256))
    h = net.add_layer(
        "fully_connected",
        [x, net.add_constant(rng.standard_normal((256, 256)).astype(np.float32))],
        {},
        name="fc",
    )
    net.mark_output(net.add_activation(h, "relu", name="relu"), "y")
    plan = build_plan(net, level=0)
    info = kiln.inspect(plan).profile(device="cpu", runs=3)
    assert info.total_flops == 2 * 64 * 256 * 256 + 64 * 256
    peaks = Peaks("cpu", fp16_tflops=1.0, fp32_tflops=0.5, gbps=10.0)
    rows = info.roofline(peaks)
    assert [r["lost_ms"] for r in rows] == sorted((r["lost_ms"] for r in rows), reverse=True)
    fc = next(r for r in rows if r["layer"] == "fc")
    assert fc["roofline_ms"] == pytest.approx(
        max(2 * 64 * 256 * 256 / 0.5e12, 4 * (64 * 256 * 2 + 256 * 256) / 10e9) * 1e3
    )
    assert fc["tflops"] == pytest.approx(rates(2 * 64 * 256 * 256, 0, fc["time_ms"])[0])
    text = info.text(peaks=peaks)
    assert "TFLOP/s" in text and "most time lost against it" in text and "cost model:" in text
    assert info.to_dict()["total_flops"] == info.total_flops
    # Without peaks: the rates, no roofline section.
    assert "most time lost" not in info.text()
    path = tmp_path / "m.plan"
    plan.save(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "inspect", str(path), "--profile", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "TFLOP/s" in out and "cost model:" in out


def test_attainable_time_takes_the_dtypes_peak():
    peaks = Peaks("cuda", fp16_tflops=800.0, fp32_tflops=50.0, gbps=4000.0)
    assert attainable_ms(8e12, 0, ["float16"], peaks) == pytest.approx(10.0)
    assert attainable_ms(8e12, 0, ["float32"], peaks) == pytest.approx(160.0)
    assert attainable_ms(0, 4e9, ["float32"], peaks) == pytest.approx(1.0)
    assert "FP16 GEMM 800.0 TFLOP/s" in str(peaks)
    # float32 against the faster float32-accurate product: three TF32 passes where they beat FP32.
    with_tf32 = Peaks("cuda", fp16_tflops=800.0, fp32_tflops=50.0, gbps=4000.0, tf32_tflops=390.0)
    assert with_tf32.float32_tflops == pytest.approx(130.0)
    assert attainable_ms(13e12, 0, ["float32"], with_tf32) == pytest.approx(100.0)
    assert attainable_ms(8e12, 0, ["float16"], with_tf32) == pytest.approx(10.0)
    assert "TF32 GEMM 390.0 TFLOP/s" in str(with_tf32) and "TF32" not in str(peaks)
    slow_tf32 = Peaks("cuda", fp16_tflops=800.0, fp32_tflops=50.0, gbps=4000.0, tf32_tflops=90.0)
    assert slow_tf32.float32_tflops == 50.0


def test_measure_peaks_on_the_host():
    peaks = measure_peaks("cpu", runs=2)
    assert peaks.device == "cpu"
    assert peaks.fp16_tflops > 0 and peaks.fp32_tflops > 0 and peaks.gbps > 0
    assert peaks.tf32_tflops == 0.0 and peaks.float32_tflops == peaks.fp32_tflops


@pytest.mark.gpu
def test_measure_peaks_on_cuda():
    peaks = measure_peaks("cuda", runs=3)
    # Any current data-center GPU: well above these floors, below physical ceilings.
    assert 50 < peaks.fp16_tflops < 5000 and 5 < peaks.fp32_tflops < 500
    assert peaks.fp32_tflops < peaks.tf32_tflops < peaks.fp16_tflops
    assert 300 < peaks.gbps < 20000
