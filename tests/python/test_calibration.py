"""INT8 post-training calibration through kiln.compile on a really trained model: a small CNN
trained here on scikit-learn's bundled digits (no downloads), calibrated with each algorithm,
must stay within 1% top-1 of its FP32 accuracy on held-out digits. Also the calibration cache
(reused, refused when it belongs to another network or is malformed) and the INT8 errors.

The convolutions Kiln's INT8 kernel takes (input channels a multiple of 16) become INT8
convolutions (int8 operands, integer sums: exact on the reference backend, the int8 tensor cores
on CUDA); the other quantized layers compute their fake quantization in floating point. These
tests check the calibration and its accuracy, not speed (docs/quantization.md)."""

import copy
import re

import pytest
import torch
from layer_util import DEVICES, run_plan

import kiln

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class DigitsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 4 * 4, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        for batch in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    return model, x[train], x[test], y[test]


def int8(model, example, calibrator, device="cpu", **options):
    """kiln.compile with INT8 and `calibrator`."""
    return kiln.compile(
        model,
        [example],
        enabled_precisions={torch.int8},
        calibrator=calibrator,
        device=device,
        **options,
    )


def accuracy(fn, x, y) -> float:
    with torch.no_grad():
        return (fn(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["entropy", "minmax", "percentile"])
def test_ptq_stays_within_one_percent_of_fp32(digits, device, algorithm):
    model, train, test, labels = digits
    model = copy.deepcopy(model).to(device)  # a copy: Module.to moves the shared fixture's in place
    test, labels = test.to(device), labels.to(device)
    fp32 = accuracy(model, test, labels)
    assert fp32 > 0.9  # the model learned the digits
    batches = [(b,) for b in train[:512].split(64)]
    spec = kiln.Input(min_shape=(1, 1, 8, 8), opt_shape=(64, 1, 8, 8), max_shape=(512, 1, 8, 8))
    compiled = kiln.compile(
        model,
        [spec],
        enabled_precisions={torch.int8},
        calibrator=kiln.Calibrator(batches, algorithm=algorithm),
        device=device,
        require_full_compilation=True,
    )
    layers = [la for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
    ops = [la.op for la in layers]
    int8_convs = [la.name for la in layers if la.op == "convolution" and la.attrs.get("quantized")]
    int8_linear = [la for la in layers if la.op == "fully_connected" and la.attrs.get("quantized")]
    # Both convolutions and both linear layers are INT8 layers, their inputs int8 (the CUDA
    # kernel; exact integer sums on the reference backend): the first convolution's quantized by
    # a quantize layer and zero-padded from one channel to 16, each later layer's written by the
    # layer before (requantized in its epilogue; the flatten between reshapes the int8 tensor).
    assert len(int8_convs) == 2 and len(int8_linear) == 2 and ops.count("quantize") == 1, ops
    assert ops.count("pad") == 1 and ops.count("fake_quantize") == 0, ops
    assert "output_inv_scale" in int8_linear[0].attrs, int8_linear[0].attrs
    for name in int8_convs:
        int8_conv = next(la for la in layers if la.name == name)
        assert "output_inv_scale" in int8_conv.attrs, int8_conv.attrs
    text = kiln.inspect(kiln.plans(compiled)[0]).text()
    assert len(re.findall(r"\((?:fake_)?quantize\): scale ", text)) == 1, text
    assert "range -127..127" in text, text
    assert "INT8 convolutions" in text and int8_convs[0] in text, text
    assert "INT8 linear layers" in text and int8_linear[1].name in text, text
    int8 = accuracy(compiled, test, labels)
    assert int8 >= fp32 - 0.01, (algorithm, int8, fp32)
    # Quantization really happened: the outputs move, a little.
    with torch.no_grad():
        diff = (compiled(test) - model(test)).abs().max().item()
    assert diff > 0


def test_cache_is_reused_and_refused_for_another_network(digits, tmp_path):
    model, train, test, labels = digits
    cache = tmp_path / "digits.calib"
    batches = [(b,) for b in train[:256].split(64)]
    first = int8(model, test[:64], kiln.Calibrator(batches, algorithm="minmax", cache_file=cache))
    text = cache.read_text().splitlines()
    assert text[0] == "# kiln calibration cache v1" and len(text) == 2 + 4, text
    # No batches at all: the cache alone gives the same ranges, so the same engine.
    again = int8(model, test[:64], kiln.Calibrator([], cache_file=cache))
    torch.testing.assert_close(again(test[:64]), first(test[:64]), rtol=0, atol=0)

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(kiln.KilnError, match="made for another network.*Delete it"):
        int8(Other().eval(), test[:4], kiln.Calibrator([], cache_file=cache))
    cache.write_text("# kiln calibration cache v1\nnot a valid line at all\n")
    with pytest.raises(kiln.KilnError, match="line 2 is not 'name range'"):
        int8(model, test[:4], kiln.Calibrator([], cache_file=cache))
    cache.write_text("some other file\n")
    with pytest.raises(kiln.KilnError, match="not a Kiln calibration cache"):
        int8(model, test[:4], kiln.Calibrator([], cache_file=cache))


def test_an_input_named_input_is_calibrated():
    # torch.nn.Sequential's forward argument is `input`, which the unlifted module renames.
    m = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    compiled = int8(m, x, kiln.Calibrator([(x,)]), min_block_size=1)  # x is in range
    text = kiln.inspect(kiln.plans(compiled)[0]).text()
    assert "(fake_quantize): scale " in text, text
    torch.testing.assert_close(compiled(x), m(x), rtol=0.05, atol=0.05)


def test_int8_errors(digits):
    model, _, test, _ = digits
    with pytest.raises(kiln.KilnError, match=r"batch 0 input 0 has shape \[8, 1, 8, 8\], outside"):
        int8(model, test[:4], kiln.Calibrator([(test[:8],)]))
    with pytest.raises(kiln.KilnError, match="INT8 needs either a calibrator"):
        kiln.compile(model, [test[:4]], enabled_precisions={torch.int8}, device="cpu")
    with pytest.raises(ValueError, match="a calibrator is for INT8"):
        kiln.compile(model, [test[:4]], calibrator=kiln.Calibrator([(test[:4],)]), device="cpu")
    with pytest.raises(ValueError, match="unknown calibration algorithm 'kl'"):
        kiln.Calibrator([], algorithm="kl")
    with pytest.raises(kiln.KilnError, match="calibration batches are empty"):
        int8(model, test[:4], kiln.Calibrator([]))


def digits_network(model):
    """The trained DigitsNet written with the network API (kiln.Network), its weights constants."""
    conv1, conv2 = model.features[0], model.features[2]
    fc1, fc2 = model.head[1], model.head[3]
    net = kiln.Network()
    x = net.add_input("x", "float32", [-1, 1, 8, 8])
    a = net.add_convolution(x, conv1.weight.detach(), conv1.bias.detach(), padding=1, name="c1")
    a = net.add_activation(a, "relu")
    a = net.add_convolution(
        a, conv2.weight.detach(), conv2.bias.detach(), stride=2, padding=1, name="c2"
    )
    a = net.add_flatten(net.add_activation(a, "relu"), 1)
    a = net.add_activation(
        net.add_fully_connected(a, fc1.weight.detach(), fc1.bias.detach()), "relu"
    )
    net.mark_output(net.add_fully_connected(a, fc2.weight.detach(), fc2.bias.detach()), "y")
    return net


def native_int8_plan(net, calibrator, device="cpu"):
    config = kiln.BuilderConfig(
        device=device, precisions=["fp32", torch.int8], calibrator=calibrator
    )
    config.add_optimization_profile({"x": ([1, 1, 8, 8], [64, 1, 8, 8], [512, 1, 8, 8])})
    return kiln.Builder().build(net, config)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["entropy", "minmax", "percentile"])
def test_native_api_ptq_stays_within_one_percent_of_fp32(digits, algorithm, device, tmp_path):
    # The network API's INT8: BuilderConfig(precisions=[..., int8], calibrator=kiln.Calibrator).
    # Calibration and the engine run on `device` (a CUDA build calibrates on the GPU).
    model, train, test, labels = digits
    net = digits_network(model)
    cache = tmp_path / "native.calib"
    batches = [(b,) for b in train[:512].split(64)]
    calibrator = kiln.Calibrator(batches, algorithm=algorithm, cache_file=cache)
    plan = native_int8_plan(net, calibrator, device)
    ops = [layer["op"] for layer in plan.layers()]
    # Four quantized inputs: the first convolution's an int8 tensor of a quantize layer (padded
    # from one channel to 16), each later layer's written as int8 by the layer before
    # (requantized in its epilogue).
    int8_layers = [la["op"] for la in plan.layers() if la["attrs"].get("quantized")]
    assert ops.count("fake_quantize") == 0 and ops.count("quantize") == 1, ops
    assert int8_layers == ["convolution", "convolution", "fully_connected", "fully_connected"], (
        int8_layers
    )
    fp32 = accuracy(model, test, labels)
    assert fp32 > 0.9
    int8 = (run_plan(plan, {"x": test}, device)["y"].argmax(1) == labels).float().mean().item()
    assert int8 >= fp32 - 0.01, (algorithm, int8, fp32)
    lines = cache.read_text().splitlines()
    assert lines[:2] == ["# kiln calibration cache v1", f"algorithm {algorithm}"], lines
    assert len(lines) == 2 + 4, lines
    # The cache alone (batches as dicts by input name would be read, but none are needed).
    again = native_int8_plan(net, kiln.Calibrator([{"x": train[:1]}], cache_file=cache), device)
    torch.testing.assert_close(
        run_plan(again, {"x": test}, device)["y"],
        run_plan(plan, {"x": test}, device)["y"],
        rtol=0,
        atol=0,
    )


def test_native_api_int8_errors(digits, tmp_path):
    model, train, _, _ = digits
    net = digits_network(model)
    with pytest.raises(kiln.KilnError, match="INT8 needs either a calibrator"):
        native_int8_plan(net, None)
    with pytest.raises(kiln.KilnError, match="calibrator but neither INT8 nor FP8 is enabled"):
        config = kiln.BuilderConfig(device="cpu", calibrator=kiln.Calibrator([(train[:4],)]))
        config.add_optimization_profile({"x": ([1, 1, 8, 8], [4, 1, 8, 8], [8, 1, 8, 8])})
        kiln.Builder().build(net, config)
    with pytest.raises(kiln.KilnError, match="input 'x' has dtype float64"):
        native_int8_plan(net, kiln.Calibrator([(train[:4].double(),)]))
    with pytest.raises(
        kiln.KilnError, match="input 'x' is float16, the network's input is float32"
    ):
        native_int8_plan(net, kiln.Calibrator([(train[:4].half(),)]))
    with pytest.raises(kiln.KilnError, match="batch 0 has no input 'x'"):
        native_int8_plan(net, kiln.Calibrator([{"y": train[:4]}]))
    with pytest.raises(kiln.KilnError, match="outside optimization profile"):
        native_int8_plan(net, kiln.Calibrator([(train[:600],)]))
    cache = tmp_path / "other.calib"
    cache.write_text("# kiln calibration cache v1\nalgorithm minmax\nsomething 0x1p+0\n")
    with pytest.raises(kiln.KilnError, match="made for another network"):
        native_int8_plan(net, kiln.Calibrator([], cache_file=cache))
    with pytest.raises(TypeError, match="must be a kiln.Calibrator"):
        kiln.BuilderConfig(calibrator=object())


class QatDigitsNet(DigitsNet):
    """DigitsNet with QAT fake quantization in its forward (as torch's QAT modules compute it):
    per-tensor activations at fixed scales, per-channel weights."""

    def __init__(self, act_scales):
        super().__init__()
        self.act_scales = act_scales

    def forward(self, x):
        convs = [self.features[0], self.features[2]]
        linears = [self.head[1], self.head[3]]
        for k, conv in enumerate(convs):
            x = torch.fake_quantize_per_tensor_affine(x, self.act_scales[k], 0, -127, 127)
            x = torch.nn.functional.conv2d(
                x, _fq_weight(conv.weight), conv.bias, conv.stride, conv.padding
            ).relu()
        x = x.flatten(1)
        for k, fc in enumerate(linears):
            x = torch.fake_quantize_per_tensor_affine(x, self.act_scales[2 + k], 0, -127, 127)
            x = torch.nn.functional.linear(x, _fq_weight(fc.weight), fc.bias)
            if k == 0:
                x = x.relu()
        return x


def _fq_weight(w):
    scales = (w.detach().abs().flatten(1).amax(1) / 127).clamp_min(1e-8)
    zeros = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scales, zeros, 0, -127, 127)


def test_qat_model_agrees_with_its_eager_fake_quant_model(digits):
    # A QAT fine-tune of the trained net (straight-through gradients of torch's fake-quant ops),
    # then kiln.compile of the Q/DQ model without a calibrator: its predictions on held-out digits
    # agree with the eager fake-quant model's on >= 99.5% of them.
    model, train, test, labels = digits
    qat = QatDigitsNet([0.01, 0.05, 0.05, 0.1])
    qat.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    y_train = model(train).argmax(1).detach()  # distil the FP32 model's answers
    qat.train()
    for _ in range(3):
        for batch in torch.randperm(len(train), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(qat(train[batch]), y_train[batch]).backward()
            opt.step()
    qat.eval()
    # A static batch: torch.export cannot trace fake_quantize ops over a dynamic dim (their
    # decomposition reaches an op without a meta kernel).
    compiled = kiln.compile(
        qat,
        [test],
        enabled_precisions={torch.int8},
        device="cpu",
        require_full_compilation=True,
    )
    with torch.no_grad():
        want = qat(test).argmax(1)
        got = compiled(test).argmax(1)
    assert (got == want).float().mean().item() >= 0.995
    assert accuracy(compiled, test, labels) >= accuracy(model, test, labels) - 0.02


def _int8_symmetric_quantizer():
    """A pt2e Quantizer (torchao's API) that annotates every conv2d and linear as TensorRT-style
    INT8: symmetric per-tensor activations and per-output-channel weights, -127..127, min/max
    observers. Kiln needs int8 (not uint8, which torchao's X86 quantizer uses for activations)."""
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
    )

    def spec(qscheme, observer, **kw):
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=qscheme,
            is_dynamic=False,
            observer_or_fake_quant_ctr=observer.with_args(eps=2**-12),
            **kw,
        )

    act = spec(torch.per_tensor_symmetric, MinMaxObserver)
    weight = spec(torch.per_channel_symmetric, PerChannelMinMaxObserver, ch_axis=0)
    aten = torch.ops.aten

    class Int8Symmetric(Quantizer):
        def annotate(self, gm):
            for n in gm.graph.nodes:
                if n.op == "call_function" and n.target in (
                    aten.conv2d.default,
                    aten.linear.default,
                ):
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={n.args[0]: act, n.args[1]: weight}, _annotated=True
                    )
            return gm

        def validate(self, gm):
            pass

    return Int8Symmetric()


@pytest.mark.parametrize("device", DEVICES)
def test_torchao_pt2e_model_agrees_with_its_eager_quantized_model(digits, device):
    # torchao's pt2e flow end to end: export, prepare_pt2e with an INT8 quantizer, calibrate on
    # training digits, convert_pt2e (quantized_decomposed Q/DQ ops, int8 weights per channel),
    # then kiln.compile without a calibrator. Every node converts, and the predictions agree with
    # the converted eager model's on >= 99.5% of held-out digits. The second convolution (16 input
    # channels) reads the int8 tensor of its explicit quantize as an INT8 convolution.
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    model, train, test, labels = digits
    batch = {0: torch.export.Dim("batch", max=512)}
    captured = torch.export.export(model, (test,), dynamic_shapes=(batch,)).module()
    prepared = pt2e.prepare_pt2e(captured, _int8_symmetric_quantizer())
    with torch.no_grad():
        for batch in train[:512].split(64):
            prepared(batch)
    quantized = pt2e.convert_pt2e(prepared)
    targets = {str(n.target) for n in quantized.graph.nodes if n.op == "call_function"}
    assert "quantized_decomposed.quantize_per_tensor.default" in targets, targets
    assert "quantized_decomposed.dequantize_per_channel.default" in targets, targets
    quantized = quantized.to(device)
    test, labels = test.to(device), labels.to(device)
    compiled = kiln.compile(
        quantized,
        [test],
        enabled_precisions={torch.int8},
        device=device,
        require_full_compilation=True,
    )
    layers = [la for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
    ops = [la.op for la in layers]
    int8_convs = [la for la in layers if la.op == "convolution" and la.attrs.get("quantized")]
    int8_linear = [la for la in layers if la.op == "fully_connected" and la.attrs.get("quantized")]
    # Both convolutions and both linear layers read their int8 tensors themselves (the first
    # convolution's zero-padded from one channel to 16; each layer but the last writes the next
    # one's: their quantize folded in).
    assert len(int8_convs) == 2 and len(int8_linear) == 2, ops
    assert ops.count("quantize") == 1 and ops.count("dequantize") == 0, ops
    with torch.no_grad():
        want = quantized(test).argmax(1)
        got = compiled(test).argmax(1)
    assert (got == want).float().mean().item() >= 0.995
    assert (
        accuracy(compiled, test, labels)
        >= accuracy(copy.deepcopy(model).to(device), test, labels) - 0.01
    )


class TinyEncoder(torch.nn.Module):
    """A one-block transformer encoder (attention written out, so export sees linear layers and
    scaled_dot_product_attention) with mean pooling and a classifier."""

    def __init__(self, vocab=10, length=12, width=32, heads=4, classes=3):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Parameter(torch.randn(length, width) * 0.1)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm1 = torch.nn.LayerNorm(width)
        self.ff1 = torch.nn.Linear(width, 2 * width)
        self.ff2 = torch.nn.Linear(2 * width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.out = torch.nn.Linear(width, classes)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position
        b, s, w = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = self.norm1(x + self.proj(a.transpose(1, 2).reshape(b, s, w)))
        x = self.norm2(x + self.ff2(self.ff1(x).relu()))
        return self.out(x.mean(1))


def sequences(n, g, vocab=10, length=12):
    """Random token sequences; the label compares the first token with the last (<, =, >)."""
    tokens = torch.randint(0, vocab, (n, length), generator=g)
    tokens[: n // 3, -1] = tokens[: n // 3, 0]  # enough "equal" examples
    label = torch.sign(tokens[:, 0] - tokens[:, -1]) + 1
    return tokens, label


def trained_encoder():
    """TinyEncoder trained on the sequence task (seeded), and the generator to draw more from."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        tokens, label = sequences(128, g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(tokens), label).backward()
        opt.step()
    return model.eval(), g


def test_ptq_transformer_encoder_stays_within_one_percent(tmp_path):
    model, g = trained_encoder()
    test, labels = sequences(1000, g)
    fp32 = accuracy(model, test, labels)
    assert fp32 > 0.9, fp32  # it learned to compare the two positions
    batches = [(sequences(64, g)[0],) for _ in range(8)]
    spec = kiln.Input(
        min_shape=(1, 12), opt_shape=(64, 12), max_shape=(1000, 12), dtype=torch.int64
    )
    for algorithm in ("entropy", "minmax", "percentile"):
        compiled = kiln.compile(
            model,
            [spec],
            enabled_precisions={torch.int8},
            calibrator=kiln.Calibrator(batches, algorithm=algorithm),
            device="cpu",
            require_full_compilation=True,
        )
        layers = [la for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
        ops = [la.op for la in layers]
        int8_linear = [
            la for la in layers if la.op == "fully_connected" and la.attrs.get("quantized")
        ]
        # qkv, proj, ff1, ff2 are INT8 linear layers; the classifier (3 outputs, an odd number)
        # keeps its fake quantization.
        assert len(int8_linear) == 4 and ops.count("fake_quantize") == 1, ops
        assert accuracy(compiled, test, labels) >= fp32 - 0.01, algorithm


class ResidualBlocks(torch.nn.Module):
    """A stem and two ResNet basic blocks (identity shortcuts), 16 channels."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(4))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for k in range(2):
            h = torch.relu(self.convs[2 * k + 1](torch.relu(self.convs[2 * k](h))) + h)
        return h


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_calibrated_residual_stream_is_int8(device):
    # A calibrated build reads each block's residual as the int8 tensor its next convolution
    # reads (residual_scale), so no block output is written in floating point as well.
    torch.manual_seed(0)
    model = ResidualBlocks().eval()
    batches = [(torch.randn(2, 16, 12, 12, device=device),) for _ in range(3)]
    compiled = int8(
        copy.deepcopy(model).to(device),
        batches[0][0],
        kiln.Calibrator(batches, algorithm="minmax"),
        device=device,
        min_block_size=1,
    )
    layers = kiln.inspect(kiln.plans(compiled)[0]).layers
    convs = [la for la in layers if la.op == "convolution"]
    assert all(la.attrs.get("quantized") == 1 for la in convs), [la.name for la in convs]
    assert sum("residual_scale" in la.attrs for la in convs) == 2
    assert not any(la.attrs.get("int8_copy") for la in convs)
    x = torch.randn(2, 16, 12, 12)  # fresh, the compiled shape
    want = model(x)
    got = compiled(x.to(device)).float().cpu()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.999, cos


class DownsampleBlock(torch.nn.Module):
    """A stem, then a ResNet basic block whose shortcut is a strided 1x1 convolution and batch norm
    (the downsample branch), then a convolution reading the block's output."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.a = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn_a = torch.nn.BatchNorm2d(32)
        self.b = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.bn_b = torch.nn.BatchNorm2d(32)
        self.down = torch.nn.Conv2d(16, 32, 1, stride=2)
        self.bn_down = torch.nn.BatchNorm2d(32)
        self.head = torch.nn.Conv2d(32, 16, 3, padding=1)
        for bn in (self.bn_a, self.bn_b, self.bn_down):  # not the identity: the folds are checked
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = self.bn_b(self.b(torch.relu(self.bn_a(self.a(h)))))
        return self.head(torch.relu(y + self.bn_down(self.down(h))))


def _downsample_network(model):
    """DownsampleBlock written with the network API (batch norms folded into the biases)."""

    def folded(conv, bn):
        s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight.detach() * s[:, None, None, None]
        return w, (conv.bias.detach() - bn.running_mean) * s + bn.bias.detach()

    net = kiln.Network()
    x = net.add_input("x", "float32", [2, 16, 12, 12])
    h = net.add_activation(
        net.add_convolution(x, model.stem.weight.detach(), model.stem.bias.detach(), padding=1),
        "relu",
    )
    a = net.add_activation(
        net.add_convolution(h, *folded(model.a, model.bn_a), stride=2, padding=1), "relu"
    )
    b = net.add_convolution(a, *folded(model.b, model.bn_b), padding=1, name="b")
    d = net.add_convolution(h, *folded(model.down, model.bn_down), stride=2, name="down")
    s = net.add_activation(net.add_elementwise(b, d, "add"), "relu")
    net.mark_output(
        net.add_convolution(s, model.head.weight.detach(), model.head.bias.detach(), padding=1), "y"
    )
    return net


def _check_int8_downsample(layers, down_name):
    convs = [la for la in layers if la.op == "convolution"]
    assert all(la.attrs.get("quantized") == 1 for la in convs), [
        (la.name, la.dtypes) for la in convs
    ]
    assert not [la.op for la in layers if la.op == "fake_quantize"], [la.op for la in layers]
    down = next(la for la in convs if la.name == down_name)
    assert down.dtypes.endswith("->int8"), down.dtypes  # the shortcut written as int8 ...
    # ... and read so by the block's last convolution (an int8 residual, dequantized there).
    assert sum("residual_scale" in la.attrs for la in convs) == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_calibrated_downsample_branch_is_int8(device):
    # Calibration quantizes the downsample branch for the residual add (as TensorRT's implicit
    # INT8 does), so its convolution writes int8 and the block's last convolution reads it so.
    torch.manual_seed(0)
    model = DownsampleBlock().eval()
    batches = [(torch.randn(2, 16, 12, 12),) for _ in range(3)]
    compiled = int8(
        copy.deepcopy(model).to(device),
        batches[0][0].to(device),
        kiln.Calibrator([tuple(t.to(device) for t in b) for b in batches], algorithm="minmax"),
        device=device,
        min_block_size=1,
    )
    _check_int8_downsample(kiln.inspect(kiln.plans(compiled)[0]).layers, "convolution_3")
    x = torch.randn(2, 16, 12, 12)  # fresh
    got = compiled(x.to(device)).float().cpu()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), model(x).flatten(), dim=0)
    assert cos > 0.999, cos
    # The network API calibrates the same way (core/calibration.cpp).
    config = kiln.BuilderConfig(
        device=device,
        precisions=["fp32", torch.int8],
        calibrator=kiln.Calibrator(batches, algorithm="minmax"),
    )
    plan = kiln.Builder().build(_downsample_network(model), config)
    _check_int8_downsample(kiln.inspect(plan).layers, "down")
    got = run_plan(plan, {"x": x}, device)["y"].float().cpu()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), model(x).flatten(), dim=0)
    assert cos > 0.999, cos


class StemNet(torch.nn.Module):
    """An RGB stem (7x7, stride 2: space_to_depth_stems folds its image), then a convolution."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 7, stride=2, padding=3)
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.stem(x)))


def test_int8_stem_fold_writes_int8_itself(monkeypatch):
    # The stem's image fold (space_to_depth) writes the int8 tensor its INT8 convolution reads,
    # quantized exactly as the quantize layer it replaces (fold_quantize_copies): one pass over
    # the image. Reference backend: the same bits as the build without that fold.
    torch.manual_seed(0)
    model = StemNet().eval()
    batches = [(torch.randn(2, 3, 30, 30),) for _ in range(3)]

    def build():
        return int8(model, batches[0][0], kiln.Calibrator(batches, algorithm="minmax"))

    compiled = build()
    layers = kiln.inspect(kiln.plans(compiled)[0]).layers
    folds = [la for la in layers if la.op == "space_to_depth"]
    assert len(folds) == 1 and folds[0].dtypes.endswith("->int8"), [
        (la.op, la.dtypes) for la in layers
    ]
    assert not [la for la in layers if la.op == "quantize"], [la.op for la in layers]
    monkeypatch.setenv("KILN_SKIP_PASSES", "fold_quantize_copies")
    unfolded = build()
    ops = [la.op for la in kiln.inspect(kiln.plans(unfolded)[0]).layers]
    assert "quantize" in ops, ops
    x = torch.randn(2, 3, 30, 30)
    torch.testing.assert_close(compiled(x), unfolded(x), rtol=0, atol=0)
