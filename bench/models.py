"""The model zoo shared by the benchmark (bench/run.py) and the model checks (tools/model_check.py).

Each entry builds an eval-mode model with seeded random weights and makes its inputs for a batch
size. Vision models take images (batch, 3, 224, 224); the transformer models take token ids
(batch, seq) as int64 and return their last hidden state. ``dynamic`` says which input dims may
vary (kiln.Input ranges built by ``input_specs``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch


@contextlib.contextmanager
def torch_tf32(enabled: bool) -> Iterator[None]:
    """Whether eager PyTorch may use TF32 for float32 convolutions (cuDNN) and matmuls (cuBLAS)
    inside the block; the previous flags come back after it.

    torch lets cuDNN convolutions use TF32 by default (``torch.backends.cudnn.allow_tf32``),
    while Kiln's float32 is strict unless its "tf32" precision is enabled: an FP32 reference
    computed with torch's defaults differs from strict FP32 by TF32's 10-bit mantissa (ResNet-50
    on an H100: cosine ~0.9998). FP32 truths (tests/python/test_models.py, tools/model_check.py,
    bench/run.py) are computed under ``torch_tf32(False)``.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = enabled
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, torch.device], tuple]  # (batch, device) -> example inputs
    dynamic: dict[int, tuple[int, ...]] = field(default_factory=dict)  # input -> dynamic dims
    kind: str = "vision"


def _vision(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        head = getattr(getattr(model, "heads", None), "head", None)
        if head is not None:  # torchvision zero-initializes ViT's head: outputs would be all 0
            torch.nn.init.normal_(head.weight, std=0.02)
        _calibrate_batch_norm(model)
        return model

    return build


def _calibrate_batch_norm(model: torch.nn.Module, batches: int = 2) -> None:
    """Running statistics from random images instead of torchvision's initial 0/1.

    With the initial statistics, the outputs of mobilenet_v3_large and efficientnet_b0 are about
    1e-10, below what float16 can hold, so FP16 comparisons would measure underflow.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    g = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, 3, 224, 224, generator=g))
    for m in norms:
        m.momentum = 0.1
    model.eval()


def _images(size: int = 224) -> Callable[[int, torch.device], tuple]:
    def make(batch: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(1)
        return (torch.randn(batch, 3, size, size, generator=g).to(device),)

    return make


def _tokens(vocab: int, seq: int = 128) -> Callable[[int, torch.device], tuple]:
    def make(batch: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(1)
        return (torch.randint(0, vocab, (batch, seq), generator=g).to(device),)

    return make


class LastHiddenState(torch.nn.Module):
    """A transformers model called with input_ids only, returning last_hidden_state."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return LastHiddenState(BertModel(BertConfig(), add_pooling_layer=False)).eval()


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return LastHiddenState(GPT2Model(GPT2Config(use_cache=False))).eval()


def _t5_encoder() -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64)  # t5-small
    return LastHiddenState(T5EncoderModel(config)).eval()


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("resnet50", _vision("resnet50"), _images()),
        ModelEntry("mobilenet_v3_large", _vision("mobilenet_v3_large"), _images()),
        ModelEntry("efficientnet_b0", _vision("efficientnet_b0"), _images()),
        ModelEntry("vit_b_16", _vision("vit_b_16"), _images()),
        ModelEntry("densenet121", _vision("densenet121"), _images()),
        ModelEntry("bert", _bert, _tokens(30522), {0: (0, 1)}, "transformer"),
        ModelEntry("gpt2", _gpt2, _tokens(50257), {0: (0, 1)}, "transformer"),
        ModelEntry("t5_encoder", _t5_encoder, _tokens(32128), {0: (0, 1)}, "transformer"),
    ]
}


def get(name: str) -> ModelEntry:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def parse_matrix(models: str, precisions: str) -> tuple[list[ModelEntry], list[str]]:
    """The models and precisions of a comma-separated --models / --precisions pair (bench/run.py
    and tools/model_check.py): zoo entries and canonical precision names ("half" -> "fp16").
    Raises ValueError naming an unknown model or precision."""
    from kiln.dtypes import precision_name

    try:
        entries = [get(m) for m in models.split(",") if m]
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    # int8: INT8 in an FP16 model, calibrated (bench/run.py); not a kiln.compile float precision.
    return entries, [p if p == "int8" else precision_name(p) for p in precisions.split(",") if p]


# ---- accuracy (bench/run.py and tools/model_check.py) ----------------------------------------


def compare(out: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(max abs error, cosine similarity) of out against truth, in float64 on the CPU."""
    a = out.detach().double().cpu().reshape(-1)
    b = truth.detach().double().cpu().reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != truth {tuple(truth.shape)}")
    if a.numel() == 0:
        return 0.0, 1.0
    max_abs = float((a - b).abs().max())
    denom = float(a.norm() * b.norm())
    cosine = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    return max_abs, cosine


def first_tensor(out) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out
