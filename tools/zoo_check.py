"""The zoo check (tools/model_check.py --zoo NAME): models nobody tuned Kiln for, as a new user
brings them, through kiln.compile with the default options, against eager PyTorch and against
torch.compile(mode="reduce-overhead") in the same run.

    python3 tools/model_check.py --zoo torchvision      # every classification and segmentation
                                                        # model, FP16 and FP32
    python3 tools/model_check.py --zoo torchvision --models swin_t,vgg16_bn --precisions fp16
    python3 tools/model_check.py --zoo hf-decoders      # small-config decoders, cache on, and
                                                        # T5/BART (one decoding step)
    python3 tools/model_check.py --zoo torchvision --jobs 4   # 4 rows at a time, timed in turns
    python3 tools/model_check.py --zoo torchvision --gpus 8   # every row, a GPU per worker, timed
    python3 tools/model_check.py --zoo detection        # Faster/Mask R-CNN, RetinaNet

Per model and precision, batch 1 (random weights; batch norms calibrated on random images so
outputs are not vanishingly small): engines and fallbacks (grouped by op), the cosine of Kiln's
output against FP32 eager (TF32 off), Kiln's latency and reduce-overhead's (median of CUDA-event
timed runs, both warmed up, the two interleaved), and Kiln's speedup. FP16 rows run ``model.half()``
with half inputs.
A model whose own eager FP16 output is not finite (random weights overflow float16) is judged in
FP32, and the row says so. Thresholds: cosine >= 0.999 (FP16) / 0.9999 (FP32), 1 engine, 0
fallbacks (detection: exactly the data-dependent ops in PyTorch, besides the nodes the
partitioner keeps there by choice: graphs below min_block_size, constants only PyTorch reads,
listed apart), speedup >= 1 (FP16).
A model whose eager FP16 output is finite but itself misses the FP16 bar (inception_v3 and
fcn_resnet50 with random weights: 0.9987 and 0.987) cannot meet it in any FP16 runtime; its FP16
row is judged against eager FP16 instead: Kiln's error (1 - cosine) at most 1.5x eager FP16's
(EAGER_FP16_MARGIN), and the row says so. Its FP32 row keeps the 0.9999 bar.

FP32 rows are judged on accuracy and structure only (the speed bar is FP16's). With `--jobs N`
they run first, N at a time, each in a worker process of its own (a crash fails its row, not the
run), untimed and without the peer. Then the FP16 rows run N at a time in worker processes too,
timed, sharing the one GPU in turns (`kiln.runner.gpu_turn`, a file lock): a row holds the GPU
alone for Kiln's build (its tactics are chosen by timing them) and for each latency measurement,
while the other rows' CPU-bound work (building the model, torch.compile's compile of the peer)
goes on; only their short eager runs and the peer's first calls share the GPU with a measurement.
Without `--jobs` every row runs in this process, one at a time. With `--gpus K` (a machine of K
GPUs) every row runs in a worker process that has one GPU to itself (CUDA_VISIBLE_DEVICES), timed
with its peer: K rows at a time, none sharing a GPU.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from models import compare, torch_tf32  # noqa: E402

from kiln.runner import (  # noqa: E402 (also the benchmark's)
    GPU_LOCK_ENV,
    gpu_turn,
    hardware_name,
    shared_gpu_env,
    source_commit,
)

COSINE_MIN = {"fp32": 0.9999, "fp16": 0.999}
# FP16 rows whose eager FP16 misses COSINE_MIN: Kiln's 1 - cosine may be this many times eager's.
EAGER_FP16_MARGIN = 1.5
# Detection models: what must stay in PyTorch (data-dependent output shapes and the loops over
# them); the zoo check lists what did.
DETECTION_DATA_DEPENDENT = {"aten.nonzero.default", "torchvision.nms.default", "aten.topk.default"}


@dataclass
class ZooModel:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.device], tuple]  # example inputs (FP32) -> cast for FP16
    kwargs: Callable[[torch.device], dict] | None = None  # keyword inputs instead
    kind: str = "vision"  # vision, decoder, detection
    output: Callable = lambda out: out  # the tensors compared (a list)


@dataclass
class ZooRow:
    model: str
    precision: str
    engines: int | None = None
    fallbacks: int | None = None
    fallback_ops: str = ""
    cosine: float | None = None
    judged: str = ""  # "", "in fp32 (eager fp16 overflows)" or "against eager fp16 (...)"
    path: str = ""  # "" (kiln.compile), or why it went through torch.compile(backend="kiln")
    eager_cosine: float | None = None  # FP16 rows: eager FP16 against eager FP32
    kiln_ms: float | None = None
    peer_ms: float | None = None
    status: str = "FAIL"
    error: str = ""
    seconds: float = 0.0
    # Where the row ran (rows of several runs merge into one table): the Kiln source (a commit,
    # "+changes" when the tracked files differed from it) and the device.
    source: str = ""
    device: str = ""

    @property
    def speedup(self) -> float | None:
        if self.kiln_ms and self.peer_ms:
            return self.peer_ms / self.kiln_ms
        return None


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, list, dict, ModelOutput, cache objects)."""
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _cosine(outs, truths) -> tuple[float, float]:
    """(max abs error, cosine) over all output tensors flattened together (floating ones)."""
    a = [o.float().flatten() for o in outs if o.is_floating_point()]
    b = [t.float().flatten() for t in truths if t.is_floating_point()]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise ValueError("output structure differs from eager")
    return compare(torch.cat(a), torch.cat(b))


def _median_ms(fn, runs: int = 50, warmup: int = 10) -> float:
    from kiln.runner import median_latency_ms

    return median_latency_ms(fn, runs, warmup)


def _time_against_peer(
    row, run, model, args, kwargs, peer, runs, warmup, after=None, dynamo=False
) -> None:
    """row.kiln_ms: the median of `run`; with `peer`, row.peer_ms: that of
    torch.compile(model, mode="reduce-overhead"), which compiles and records its CUDA graphs (its
    first calls) outside the GPU turns. The two are timed in one turn, their runs interleaved
    (median_latencies_ms), so a load on the machine meanwhile weighs on both alike. `dynamo`: `run`
    is a dynamo-compiled Kiln, which torch._dynamo.reset() (before the peer's compile) discards:
    it is timed first, in a turn of its own. `after` (the profile) runs in Kiln's turn."""
    from kiln.runner import median_latencies_ms

    def peer_compiled():
        torch._dynamo.reset()
        opt = torch.compile(model, mode="reduce-overhead")
        with torch.no_grad():
            for _ in range(3):
                opt(*args, **kwargs)
        return lambda: opt(*args, **kwargs)

    if peer and not dynamo:
        timed = [run, peer_compiled()]
        with gpu_turn():
            row.kiln_ms, row.peer_ms = median_latencies_ms(timed, runs, warmup)
            if after is not None:
                after()
        return
    with gpu_turn():
        row.kiln_ms = _median_ms(run, runs, warmup)
        if after is not None:
            after()
    if peer:
        opt = peer_compiled()
        with gpu_turn():
            row.peer_ms = _median_ms(opt, runs, warmup)


def _calibrate(model: torch.nn.Module, make_input: Callable[[], tuple]) -> None:
    """Running statistics from random inputs (torchvision's initial 0/1 make some outputs
    underflow float16); see bench/models.py."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(*make_input())
    for m in norms:
        m.momentum = 0.1
    model.eval()


# ---- the zoos -------------------------------------------------------------------------------


def _image(size: int, batch: int = 1):
    def make(device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(1)
        return (torch.randn(batch, 3, size, size, generator=g).to(device),)

    return make


def torchvision_zoo() -> list[ZooModel]:
    import torchvision

    def builder(name: str, segmentation: bool):
        def build() -> torch.nn.Module:
            torch.manual_seed(0)
            kw = {"weights": None}
            if segmentation:
                kw["weights_backbone"] = None
            model = torchvision.models.get_model(name, **kw).eval()
            head = getattr(getattr(model, "heads", None), "head", None)
            if head is not None:  # ViT's zero-initialized head would make every output 0
                torch.nn.init.normal_(head.weight, std=0.02)
            size = 299 if name.startswith("inception") else 224
            g = torch.Generator().manual_seed(2)
            _calibrate(model, lambda: (torch.randn(2, 3, size, size, generator=g),))
            return model

        return build

    zoo = []
    for name in torchvision.models.list_models(module=torchvision.models):
        zoo.append(
            ZooModel(
                name, builder(name, False), _image(299 if name.startswith("inception") else 224)
            )
        )
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        zoo.append(ZooModel(name, builder(name, True), _image(224), output=lambda out: out["out"]))
    return zoo


def hf_decoder_zoo(seq: int = 128) -> list[ZooModel]:
    import transformers as tf

    small = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4)
    heads = dict(num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)

    def tokens(device: torch.device) -> dict:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 1024, (1, seq), generator=g).to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def seq2seq(device: torch.device) -> dict:
        kw = tokens(device)
        kw["decoder_input_ids"] = kw["input_ids"][:, :1].clone()  # one decoding step
        return kw

    def make(ctor, config):
        def build():
            torch.manual_seed(0)
            return ctor(config).eval()

        return build

    return [
        ZooModel(
            "LlamaForCausalLM",
            make(tf.LlamaForCausalLM, tf.LlamaConfig(**small, **heads)),
            None,
            tokens,
            "decoder",
        ),
        ZooModel(
            "MistralModel",
            make(tf.MistralModel, tf.MistralConfig(**small, **heads)),
            None,
            tokens,
            "decoder",
        ),
        ZooModel(
            "Qwen2Model",
            make(tf.Qwen2Model, tf.Qwen2Config(**small, **heads)),
            None,
            tokens,
            "decoder",
        ),
        ZooModel(
            "GPT2LMHeadModel",
            make(
                tf.GPT2LMHeadModel,
                tf.GPT2Config(vocab_size=1024, n_embd=256, n_layer=4, n_head=8, n_positions=512),
            ),
            None,
            tokens,
            "decoder",
        ),
        ZooModel(
            "T5Model",
            make(
                tf.T5Model,
                tf.T5Config(vocab_size=1024, d_model=256, d_ff=512, num_layers=2, num_heads=8),
            ),
            None,
            seq2seq,
            "decoder",
        ),
        ZooModel(
            "BartModel",
            make(
                tf.BartModel,
                tf.BartConfig(
                    vocab_size=1024,
                    d_model=256,
                    encoder_layers=2,
                    decoder_layers=2,
                    encoder_attention_heads=8,
                    decoder_attention_heads=8,
                    encoder_ffn_dim=512,
                    decoder_ffn_dim=512,
                    max_position_embeddings=512,
                ),
            ),
            None,
            seq2seq,
            "decoder",
        ),
    ]


def detection_zoo() -> list[ZooModel]:
    import torchvision

    def builder(name: str):
        def build():
            torch.manual_seed(0)
            return torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()

        return build

    def image(device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(1)
        return ([torch.rand(3, 320, 320, generator=g).to(device)],)

    names = ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "maskrcnn_resnet50_fpn"]
    return [ZooModel(n, builder(n), image, kind="detection") for n in names]


ZOOS = {"torchvision": torchvision_zoo, "hf-decoders": hf_decoder_zoo, "detection": detection_zoo}


# ---- one row --------------------------------------------------------------------------------


def _cast(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list | tuple):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def profile(compiled, top: int = 8) -> str:
    """Per-(op, kernel) GPU time of each engine of a compiled module (kiln.inspect().profile())."""
    import kiln

    lines = []
    for k, plan in enumerate(kiln.plans(compiled)):
        info = kiln.inspect(plan).profile(runs=20)
        lines.append(f"  engine {k}: {len(info.layers)} layers, {info.total_ms:.3f} ms summed")
        by_kind, count = Counter(), Counter()
        for la in info.layers:
            by_kind[(la.op, la.kernel)] += la.time_ms or 0.0
            count[(la.op, la.kernel)] += 1
        for (op, kernel), ms in by_kind.most_common(top):
            lines.append(f"    {ms:8.3f} ms {count[(op, kernel)]:4d} x {op:18s} {kernel}")
        for la in sorted(info.layers, key=lambda la: -(la.time_ms or 0.0))[:top]:
            shapes = " ".join("x".join(map(str, o[2])) for o in la.outputs)
            lines.append(
                f"    slow: {la.time_ms:7.3f} ms {la.name[:40]:40s} {la.op:14s} "
                f"{la.kernel[:30]:30s} tac {la.tactic} {shapes} {la.dtypes}"
                + (f" groups {la.attrs['groups']}" if la.attrs.get("groups", 1) != 1 else "")
            )
    return "\n".join(lines)


def check_row(
    entry: ZooModel,
    precision: str,
    device: torch.device,
    peer: bool,
    verbose: bool,
    show_profile: bool = False,
    timed: bool = True,
) -> ZooRow:
    import kiln

    row = ZooRow(entry.name, precision)
    t0 = time.perf_counter()
    try:
        with torch_tf32(False):
            _check(kiln, entry, precision, device, peer, row, show_profile, timed)
    except Exception as e:  # noqa: BLE001 (reported in the row)
        if verbose:
            traceback.print_exc()
        row.error = " ".join(f"{type(e).__name__}: {e}".split())[:200]
    row.seconds = time.perf_counter() - t0
    row.status = _decide(entry, row)
    return row


def _check(kiln, entry, precision, device, peer, row, show_profile=False, timed=True) -> None:
    from kiln.export import register_library_pytrees

    model = entry.build().to(device)
    register_library_pytrees(model)  # eager outputs flatten as the compiled module's do
    args = entry.inputs(device) if entry.inputs else ()
    kwargs = entry.kwargs(device) if entry.kwargs else {}
    with torch.no_grad():
        truth = _tensors(entry.output(model(*args, **kwargs)))
    dtype = torch.float16 if precision == "fp16" else torch.float32
    if dtype != torch.float32:
        half = model.to(dtype)
        h_args, h_kwargs = _cast(args, dtype), _cast(kwargs, dtype)
        with torch.no_grad():
            eager16 = _tensors(entry.output(half(*h_args, **h_kwargs)))
        if not all(torch.isfinite(t).all() for t in eager16 if t.is_floating_point()):
            row.judged = "in fp32 (eager fp16 overflows)"
            dtype, precision = torch.float32, "fp32"
            model = model.float()
        else:
            model, args, kwargs = half, h_args, h_kwargs
            _, row.eager_cosine = _cosine(eager16, truth)
    if entry.kind == "detection":
        # Lists of images in, data-dependent shapes inside: torch.compile(backend="kiln") (dynamo
        # splits the model into graphs; Kiln compiles each and keeps their data-dependent ops in
        # PyTorch). What the backend compiled is read from Kiln's log.
        _through_dynamo(entry, model, args, kwargs, precision, device, peer and timed, row, timed)
        return
    from kiln.export import DataDependentControlFlow

    try:
        with gpu_turn():
            compiled = kiln.compile(
                model,
                list(args),
                kwarg_inputs=kwargs or None,
                enabled_precisions={precision},
                device=device.type,
            )
    except DataDependentControlFlow as e:
        # What kiln.compile's error advises (BART in float16 branches on isfinite().all()).
        row.path = "via torch.compile(backend='kiln'): " + str(e).split("(", 1)[1][:80]
        _through_dynamo(entry, model, args, kwargs, precision, device, peer and timed, row, timed)
        return
    report = compiled.report
    row.engines, row.fallbacks = report.num_engines, len(report.fallbacks)
    counts = Counter(f.target for f in report.fallbacks)
    why = {}
    for f in report.fallbacks:
        why.setdefault(f.target, f.reason)
    row.fallback_ops = ", ".join(
        (f"{op} x{n}" if n > 1 else op) + f" ({why[op][:100]})" for op, n in counts.most_common()
    )
    if compiled.speculated:  # branches on tensor values, checked after the engine each call
        taken = "; ".join(
            w.split(" `")[0] + ": " + w.rsplit(": ", 1)[-1] for w in compiled.speculated
        )
        checks = (
            f"engines follow the example's branch on tensor values ({taken}), checked each call"
        )
        row.fallback_ops = "; ".join(x for x in (row.fallback_ops, checks) if x)
    with gpu_turn(), torch.no_grad():
        out = _tensors(entry.output(compiled(*args, **kwargs)))
    _, row.cosine = _cosine(out, truth)
    if compiled.speculated and compiled.ran_eagerly:
        row.error = "the inputs read other tensor values than the example: eager PyTorch ran"
    if device.type != "cuda" or not timed:
        return

    def show() -> None:
        print(
            f"{entry.name} {precision}: Kiln {row.kiln_ms:.3f} ms\n{profile(compiled)}", flush=True
        )

    _time_against_peer(
        row,
        lambda: compiled(*args, **kwargs),
        model,
        args,
        kwargs,
        peer,
        runs=50,
        warmup=10,
        after=show if show_profile else None,
    )


def _through_dynamo(entry, model, args, kwargs, precision, device, peer, row, timed=True) -> None:
    """torch.compile(model, backend="kiln"): engines and fallbacks summed over dynamo's graphs
    (from Kiln's log; a graph rebuilt for new sizes counts its last build)."""
    import re

    from kiln.log import log_level, set_log_level, set_log_sink

    messages = []
    level = log_level()
    set_log_level("info")
    set_log_sink(lambda severity, message: messages.append(message))
    try:
        torch._dynamo.reset()
        options = {"enabled_precisions": {precision}, "device": device.type}
        compiled = torch.compile(model, backend="kiln", options=options)
        with gpu_turn(), torch.no_grad():  # the first call builds Kiln's engines
            truth = _tensors(entry.output(model(*args, **kwargs)))
            out = _tensors(entry.output(compiled(*args, **kwargs)))
    finally:
        set_log_sink(None)
        set_log_level(level)
    reports = _graph_reports(messages)
    eager = [m for m in messages if "runs in PyTorch (eager)" in m]
    row.engines = sum(int(re.search(r"(\d+) engine segment", m).group(1)) for m in reports)
    row.fallbacks = sum(int(re.search(r"(\d+) nodes? in PyTorch", m).group(1)) for m in reports)
    # Each node left to PyTorch, with the report's reason: a node the partitioner keeps there by
    # choice (a graph smaller than min_block_size, a value only PyTorch code reads made from
    # constants alone) is listed apart from those it could not convert.
    found = re.findall(
        r"pytorch: (?:\S+ \()?((?:aten|torchvision)\.[\w.]+).*?: ([^:\n]*)$",
        "\n".join(reports),
        flags=re.MULTILINE,
    )
    ops = Counter(op for op, why in found if not _by_choice(why))
    kept = Counter(op for op, why in found if _by_choice(why))
    # A graph Kiln could not compile runs eagerly whole: a failure to convert, listed with why
    # (a graph left eager after too many builds for new sizes is the backend's choice).
    failed = [m.split("(eager): ", 1)[-1] for m in eager if "took more than" not in m]
    if failed:
        ops["dynamo graph run eagerly"] = len(failed)
        row.error = "graphs Kiln could not compile: " + "; ".join(sorted(set(failed)))[:300]
    row.fallback_ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.most_common())
    row.fallback_ops = (row.fallback_ops or "no node unconverted") + (
        f"; {len(reports)} dynamo graphs compiled, {len(eager)} ran eagerly"
    )
    if kept:
        row.fallback_ops += (
            "; kept in PyTorch by choice (min_block_size, constants only): "
            + ", ".join(f"{op} x{n}" if n > 1 else op for op, n in kept.most_common())
        )
    if entry.kind != "detection":
        _, row.cosine = _cosine(out, truth)
    elif out[0].shape == truth[0].shape:  # the boxes, when both found as many
        _, row.cosine = _cosine([_matched_boxes(out[0], truth[0])], truth[:1])
    else:
        row.error = f"{tuple(out[0].shape)} boxes, eager {tuple(truth[0].shape)}"
    if device.type == "cuda" and timed:
        run = lambda: compiled(*args, **kwargs)  # noqa: E731
        _time_against_peer(row, run, model, args, kwargs, peer, runs=10, warmup=2, dynamo=True)


def _graph_reports(messages: list[str]) -> list[str]:
    """The backend's "compiled a dynamo graph" reports, one per graph: a graph rebuilt for new
    sizes logs its report again under the same graph id, and its last build is the one that runs."""
    import re

    latest = {}
    for m in messages:
        found = re.search(r"compiled a dynamo graph \(graph (\d+)\)", m)
        if found:
            latest[found.group(1)] = m
    return list(latest.values())


def _matched_boxes(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """`got`'s boxes in `want`'s order when each of `want`'s boxes has a distinct nearest one in
    `got` (the same detections; two whose scores differ in the fifth digit, as random weights
    give, may sort the other way round), else `got` as it is."""
    if got.ndim != 2 or got.shape[0] == 0:
        return got
    distance = (want[:, None, :].double() - got[None, :, :].double()).abs().amax(-1)
    order = distance.argmin(1)
    return got[order] if len(set(order.tolist())) == len(order) else got


def _by_choice(reason: str) -> bool:
    """A fallback reason of the partitioner's policy, not of a node it could not convert."""
    return "below min_block_size" in reason or "reads only constants" in reason


def _decide(entry: ZooModel, row: ZooRow) -> str:
    if row.error or row.cosine is None:
        return "FAIL"
    precision = "fp32" if row.judged.startswith("in fp32") else row.precision
    ok = row.cosine >= COSINE_MIN[precision]
    if (
        precision == "fp16"
        and row.eager_cosine is not None
        and row.eager_cosine < COSINE_MIN["fp16"]
    ):
        row.judged = "against eager fp16 (its own cosine misses 0.999)"
        ok = 1.0 - row.cosine <= EAGER_FP16_MARGIN * (1.0 - row.eager_cosine)
    if entry.kind == "detection":
        listed = row.fallback_ops.split(";")[0]
        ops = {
            op.split(" x")[0]
            for op in listed.split(", ")
            if op.startswith(("aten.", "torchvision."))
        }
        ok = ok and ops <= DETECTION_DATA_DEPENDENT | {"aten._local_scalar_dense.default"}
    elif entry.kind == "vision":
        ok = ok and row.engines == 1 and row.fallbacks == 0
    if row.precision == "fp16" and row.speedup is not None:
        ok = ok and row.speedup >= 1.0
    return "PASS" if ok else "FAIL"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: Sequence[ZooRow]) -> str:
    lines = [
        "| model | precision | engines | fallbacks | cosine vs FP32 eager | Kiln ms "
        "| reduce-overhead ms | speedup | result | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        eager = r.eager_cosine is not None and f"eager fp16 cosine {r.eager_cosine:.6f}"
        notes = [
            n
            for n in (r.judged and f"judged {r.judged}", r.path, eager, r.fallback_ops, r.error)
            if n
        ]
        notes.append(f"{r.seconds:.0f} s" + "".join(f", {x}" for x in (r.device, r.source) if x))
        cells = [
            r.model,
            r.precision,
            _fmt(r.engines, "d"),
            _fmt(r.fallbacks, "d"),
            _fmt(r.cosine, ".6f"),
            _fmt(r.kiln_ms, ".3f"),
            _fmt(r.peer_ms, ".3f"),
            _fmt(r.speedup, ".2f"),
            r.status,
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    speedups = [r.speedup for r in rows if r.precision == "fp16" and r.speedup is not None]
    if speedups:
        lines.append("")
        lines.append(
            f"FP16 speedup over reduce-overhead: median {statistics.median(speedups):.2f}x over "
            f"{len(speedups)} models, min {min(speedups):.2f}x"
        )
    return "\n".join(lines)


ROW_MARK = "ZOO_ROW "


def _row_in_worker(
    zoo: str,
    entry: ZooModel,
    precision: str,
    device: torch.device,
    verbose: bool,
    deadline: float,
    start: float,
    gpu: int | None = None,
    peer: bool = False,
    show_profile: bool = False,
    gpu_lock: str | None = None,
    base_env: dict[str, str] | None = None,
) -> ZooRow:
    """One row in a process of its own (`python3 tools/zoo_check.py --row ...`): a crash or a hang
    fails this row only. Killed at the run's deadline (or after an hour without one). Untimed,
    unless `gpu` gives the worker a GPU of its own (CUDA_VISIBLE_DEVICES) or `gpu_lock` names the
    lock file by which the workers sharing one GPU take turns (`gpu_turn`): then timed, with the
    peer when `peer`. The worker's environment: `base_env`, else this process's."""
    left = deadline - (time.perf_counter() - start) if deadline else 3600.0
    command = [sys.executable, __file__, "--row", zoo, entry.name, precision, str(device)]
    env = dict(os.environ if base_env is None else base_env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if gpu_lock is not None:
        env[GPU_LOCK_ENV] = gpu_lock
    if gpu is not None or gpu_lock is not None:
        command += (
            ["--timed"] + (["--peer"] if peer else []) + (["--profile"] if show_profile else [])
        )
    if verbose:
        command.append("--verbose")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(left, 1.0), env=env
        )
    except subprocess.TimeoutExpired:
        # Killed at the run's deadline: not measured (as a row that never started), unless it ran
        # for the hour a run without a deadline allows.
        status = "SKIP" if deadline and left < 3600.0 else "FAIL"
        return ZooRow(
            entry.name, precision, status=status, error=f"worker killed after {left:.0f} s"
        )
    lines = done.stdout.splitlines()
    if show_profile:
        print("\n".join(line for line in lines if not line.startswith(ROW_MARK)), flush=True)
    for line in reversed(lines):
        if line.startswith(ROW_MARK):
            return ZooRow(**json.loads(line[len(ROW_MARK) :]))
    if verbose:
        print(done.stderr[-4000:], file=sys.stderr)
    tail = " ".join(done.stderr.strip().splitlines()[-1:])[:150]
    return ZooRow(
        entry.name, precision, error=f"worker exited with status {done.returncode}: {tail}"
    )


def _worker_main(argv: Sequence[str]) -> int:
    """`--row ZOO MODEL PRECISION DEVICE [--timed] [--peer] [--profile] [--verbose]`: check_row,
    printed as JSON."""
    zoo, name, precision, device = argv[:4]
    entry = next(e for e in ZOOS[zoo]() if e.name == name)
    row = check_row(
        entry,
        precision,
        torch.device(device),
        "--peer" in argv,
        "--verbose" in argv,
        show_profile="--profile" in argv,
        timed="--timed" in argv,
    )
    print(ROW_MARK + json.dumps(asdict(row)), flush=True)
    return 0


def run(
    zoo: str,
    models: str,
    precisions: Sequence[str],
    device: torch.device,
    deadline: float,
    peer: bool,
    verbose: bool,
    out: str | None,
    show_profile: bool = False,
    jobs: int = 1,
    gpus: int = 1,
    shard: tuple[int, int] = (1, 1),
) -> int:
    entries = ZOOS[zoo]()
    if models:
        wanted = models.split(",")
        unknown = sorted(set(wanted) - {e.name for e in entries})
        if unknown:
            print(f"model_check: not in the {zoo} zoo: {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e.name in wanted]
    k, n = shard
    entries = entries[k - 1 :: n]  # every n-th model from the k-th: shards of mixed sizes
    start = time.perf_counter()
    done: dict[tuple[str, str], ZooRow] = {}
    where = {"source": source_commit(), "device": hardware_name(device)}

    lock = threading.Lock()

    def write() -> list[ZooRow]:
        """Every row so far (SKIP where none yet), and with --out the table and JSON of them, after
        each row: a run cut short keeps what it measured."""
        with lock:
            rows = [
                done.get((e.name, p)) or ZooRow(e.name, p, status="SKIP", error="time budget")
                for e in entries
                for p in precisions
            ]
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                suffix = "" if shard == (1, 1) else f"_shard{k}of{n}"
                (Path(out) / f"zoo_{zoo}{suffix}.md").write_text(markdown(rows) + "\n")
                rows_json = json.dumps([asdict(r) for r in rows], indent=1) + "\n"
                (Path(out) / f"zoo_{zoo}{suffix}.json").write_text(rows_json)
        return rows

    def report(r: ZooRow) -> None:
        r.source, r.device = where["source"], where["device"]
        done[(r.model, r.precision)] = r
        write()
        print(
            f"[{time.perf_counter() - start:6.1f}s] {r.model} {r.precision}: {r.status} "
            f"engines {r.engines} fallbacks {r.fallbacks} cosine {_fmt(r.cosine, '.6f')} "
            f"kiln {_fmt(r.kiln_ms, '.3f')} ms peer {_fmt(r.peer_ms, '.3f')} ms"
            + (f" {r.error}" if r.error else ""),
            flush=True,
        )

    def late() -> bool:
        return bool(deadline) and time.perf_counter() - start > deadline

    def in_worker(entry: ZooModel, precision: str, **where) -> ZooRow:
        return _row_in_worker(
            zoo,
            entry,
            precision,
            device,
            verbose,
            deadline,
            start,
            peer=peer,
            show_profile=show_profile,
            **where,
        )

    if gpus > 1:  # every row in a worker process that has one of the GPUs to itself, timed
        free: queue.Queue = queue.Queue()
        for g in range(gpus):
            free.put(g)

        def on_a_gpu(item: tuple[ZooModel, str]) -> None:
            entry, precision = item
            if late():
                return
            g = free.get()
            try:
                report(in_worker(entry, precision, gpu=g))
            finally:
                free.put(g)

        with ThreadPoolExecutor(gpus) as pool:
            list(pool.map(on_a_gpu, [(e, p) for e in entries for p in precisions]))
    elif jobs > 1:  # `jobs` worker processes at a time: the untimed FP32 rows, then the others

        def in_turns(item: tuple[ZooModel, str]) -> None:
            entry, precision = item
            if late():
                return
            timed = precision != "fp32" and device.type == "cuda"
            # The lock the environment names (a benchmark running beside it), else this run's.
            lock = env[GPU_LOCK_ENV] if timed else None
            report(in_worker(entry, precision, gpu_lock=lock, base_env=worker_env))

        with shared_gpu_env(jobs, "kiln_zoo_gpu_") as env:
            # Untimed rows take no turns, unless the environment names a lock of its own.
            worker_env = {**env}
            if not os.environ.get(GPU_LOCK_ENV):
                worker_env.pop(GPU_LOCK_ENV)
            for phase in (["fp32"], [p for p in precisions if p != "fp32"]):
                with ThreadPoolExecutor(jobs) as pool:
                    items = [(e, p) for e in entries for p in precisions if p in phase]
                    list(pool.map(in_turns, items))
    for entry in entries:
        for precision in precisions:
            if (entry.name, precision) in done or late():
                continue
            r = check_row(entry, precision, device, peer, verbose, show_profile)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report(r)
    rows = write()
    print()
    print(markdown(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" (1 <= K <= N): the K-th of N interleaved parts of the zoo. Raises ValueError."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N, e.g. 2/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


def merge(paths: Sequence[str]) -> str:
    """One table (and the FP16 median) of the rows in the zoo JSON files that --out wrote, each
    shard's rows in the order given; a row measured twice keeps its last measurement."""
    rows: dict[tuple[str, str], ZooRow] = {}
    for path in paths:
        for d in json.loads(Path(path).read_text()):
            r = ZooRow(**d)
            if r.status != "SKIP" or (r.model, r.precision) not in rows:
                rows[(r.model, r.precision)] = r
    return markdown(list(rows.values()))


if __name__ == "__main__" and sys.argv[1:2] == ["--row"]:
    sys.exit(_worker_main(sys.argv[2:]))
