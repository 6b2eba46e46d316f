"""The compiled-module cache (kiln/module_cache.py): a second kiln.compile of the same model code,
configuration, inputs and options skips the export and the build, and gives what a fresh compile
with the model's own weights gives; any change that could change the traced graph misses."""

import hashlib
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import kiln
from kiln import export as kiln_export
from kiln import module_cache
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(nn.Module):
    def __init__(self, width=16, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 4)
        self.scale = scale
        self.register_buffer("offset", torch.tensor([1, 2, 3, 4]))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return {"logits": self.fc(h) * self.scale + self.offset, "features": h}


def _net(seed, **kwargs):
    torch.manual_seed(seed)
    net = Net(**kwargs).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture
def exports(monkeypatch):
    """Counts the exports kiln.compile runs (a hit runs none)."""
    calls = []
    real = kiln_export.export_program

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("kiln.compiler.export_program", counted)
    monkeypatch.delenv("KILN_MODULE_CACHE", raising=False)
    return calls


def _modules(path):
    return sorted(p for p in os.listdir(path) if p.endswith(module_cache.SUFFIX))


def _compile(model, x, cache_dir, **kwargs):
    return kiln.compile(model, [x], device="cpu", min_block_size=1, cache_dir=cache_dir, **kwargs)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_second_compile_skips_export_and_equals_a_fresh_compile(tmp_path, exports):
    x = torch.randn(2, 3, 8, 8)
    first = _compile(_net(0), x, tmp_path)
    assert len(exports) == 1 and len(_modules(tmp_path)) == 1
    other = _net(1)  # same code and configuration, other weights
    second = _compile(other, x, tmp_path)
    assert len(exports) == 1, "a hit exports nothing"
    assert second.report.text == first.report.text
    with torch.no_grad():
        fresh = _compile(other, x, False)(x)
        got = second(x)
        assert _same(got, fresh)  # the refitted cached engines, bit for bit
        torch.testing.assert_close(got, other(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(first(x)["logits"], got["logits"])
    # The hit is an ordinary compiled module: refit, save and load work on it.
    third = _net(2)
    kiln.refit(second, third)
    path = tmp_path / "m.pt2"
    kiln.save(second, path)
    with torch.no_grad():
        torch.testing.assert_close(
            kiln.load(path)(x)["logits"], third(x)["logits"], rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize(
    "change",
    [
        "attribute",
        "integer buffer",
        "forward",
        "input shape",
        "option",
        "tied",
        "dtype",
        "converter",
    ],
)
def test_whatever_may_change_the_graph_misses(tmp_path, exports, change):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    model, kwargs = _net(1), {}
    if change == "attribute":
        model.scale = 2.0
    elif change == "integer buffer":
        model.offset += 1
    elif change == "forward":
        model.forward = lambda x: {"logits": model.fc(model.conv(x).mean((2, 3))), "features": x}
    elif change == "input shape":
        x = torch.randn(3, 3, 8, 8)
    elif change == "option":
        kwargs = {"torch_executed_ops": ["aten.relu.default"]}
    elif change == "tied":
        model = _net(1, width=4)
        model.conv.bias = model.bn.bias  # one parameter under two names
    elif change == "dtype":
        model = model.double()
        x = x.double()
    elif (
        change == "converter"
    ):  # a Python converter now converts relu: the cached module must not be used

        @kiln.converter("aten.relu.default")
        def relu(net, node):
            return net.add_layer(
                "activation", [node.args["self"]], {"type": "relu"}, name=node.name
            )

    try:
        compiled = _compile(model, x, tmp_path, **kwargs)
    finally:
        if change == "converter":
            kiln.plugins.remove_converter("aten.relu.default")
    assert len(exports) == 2, f"a changed {change} must compile again"
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_pytorch_segments_get_the_models_weights(tmp_path, exports):
    """A weight that a PyTorch segment reads (its op kept out of the engines) comes from the
    model at a hit, like the engines' weights."""
    x = torch.randn(2, 3, 8, 8)
    options = {"torch_executed_ops": ["aten.addmm.default", "aten.linear.default"]}
    first = _compile(_net(0), x, tmp_path, **options)
    assert first.report.fallbacks
    other = _net(1)
    second = _compile(other, x, tmp_path, **options)
    assert len(exports) == 1
    with torch.no_grad():
        assert _same(second(x), _compile(other, x, False, **options)(x))


@pytest.fixture
def warnings_logged():
    messages = []
    kiln.set_log_sink(lambda severity, message: messages.append(message))
    yield messages
    kiln.set_log_sink(None)


def test_damaged_entry_is_removed_with_a_warning(tmp_path, exports, warnings_logged):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    (entry,) = _modules(tmp_path)
    path = tmp_path / entry
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"\x80\x04garbage", data.replace(b"aten", b"xten", 1)):
        path.write_bytes(damaged)
        warnings_logged.clear()
        model = _net(2)
        compiled = _compile(model, x, tmp_path)
        assert any("ignoring and removing the cache entry" in m for m in warnings_logged)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        assert path.read_bytes() != damaged  # written again by the compile that followed
    assert len(exports) == 4


def test_an_entry_never_runs_code(tmp_path, exports):
    """Entries load with torch.load(weights_only=True): a pickle that would call a function is
    refused (a miss, removed), never run."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    (entry,) = _modules(tmp_path)
    buffer = io.BytesIO()
    torch.save({"format": 1, "key": entry.removesuffix(module_cache.SUFFIX), "x": Evil()}, buffer)
    payload = buffer.getvalue()  # with a valid checksum: only the unpickler stands in the way
    (tmp_path / entry).write_bytes(module_cache.MAGIC + hashlib.sha256(payload).digest() + payload)
    _compile(_net(1), x, tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert len(exports) == 2


def test_models_it_cannot_fingerprint_compile_uncached(tmp_path, exports):
    import threading

    x = torch.randn(2, 3, 8, 8)
    model = _net(0)
    model.lock = threading.Lock()  # no state the cache can read
    for _ in range(2):
        compiled = _compile(model, x, tmp_path)
    assert len(exports) == 2 and not _modules(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_switched_off(tmp_path, exports, monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    monkeypatch.setenv("KILN_MODULE_CACHE", "0")
    _compile(_net(0), x, tmp_path)
    _compile(_net(0), x, tmp_path)
    assert len(exports) == 2 and not _modules(tmp_path)
    _compile(_net(0), x, False)
    monkeypatch.delenv("KILN_MODULE_CACHE")
    _compile(_net(0), x, False)
    assert len(exports) == 4


def test_size_limit_counts_module_entries(tmp_path, exports):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    total = sum(os.path.getsize(tmp_path / p) for p in os.listdir(tmp_path))
    _compile(_net(0, width=8), x, tmp_path, cache_size=total + 10)
    assert len(os.listdir(tmp_path)) < 4  # the first compile's entries went first


def test_keyword_inputs_and_a_new_process(tmp_path):
    """A second process compiling the same model file hits (no export) and matches eager."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {os.path.join(ROOT, "tests", "python")!r})
        import kiln, kiln.compiler
        from test_module_cache import _net
        calls = []
        real = kiln.compiler.export_program
        kiln.compiler.export_program = lambda *a, **k: calls.append(1) or real(*a, **k)
        model = _net(int(sys.argv[1]))
        x = torch.randn(2, 3, 8, 8)
        compiled = kiln.compile(model, [], kwarg_inputs={{"x": x}}, device="cpu",
                                min_block_size=1, cache_dir=sys.argv[2])
        with torch.no_grad():
            torch.testing.assert_close(compiled(x=x), model(x), rtol=1e-4, atol=1e-4)
        print("exports", len(calls))
        """
    )
    env = dict(os.environ, KILN_ENGINE_CACHE="1", KILN_MODULE_CACHE="1")
    outputs = []
    for seed in (3, 4):
        p = subprocess.run(
            [sys.executable, "-c", script, str(seed), str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        outputs.append(p.stdout.split("exports")[-1].strip())
    assert outputs == ["1", "0"]


class _Config:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class Configured(nn.Module):
    """Attributes of the kinds real models hold: a config object, a partial, nested containers."""

    def __init__(self, act="gelu", eps=1e-5):
        super().__init__()
        import functools

        self.config = _Config(
            hidden=8, act=act, rope={"theta": 1e4, "dims": (2, 4)}, tags={"a", "b"}
        )
        self.norm = functools.partial(nn.functional.layer_norm, normalized_shape=(8,), eps=eps)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.norm(getattr(nn.functional, self.config.act)(self.proj(x)))


def test_key_is_stable_and_sees_configuration():
    import gc

    opts = {"device": torch.device("cpu")}
    spec = [kiln.Input(shape=(2, 8))]
    keys = set()
    for _ in range(5):
        keys.add(module_cache.key(Configured(), spec, [], opts))
        gc.collect()
    assert len(keys) == 1  # no object identity leaks into the key
    assert module_cache.key(Configured(act="relu"), spec, [], opts) not in keys
    assert module_cache.key(Configured(eps=1e-6), spec, [], opts) not in keys
    assert module_cache.key(Configured(), [kiln.Input(shape=(3, 8))], [], opts) not in keys
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module_cache.key(Configured(), spec, [], opts) not in keys


def test_a_transformers_model_hits_with_its_output_structure(tmp_path, exports):
    """A transformers model (a config object, ModelOutput outputs, keyword inputs): the second
    compile of the same architecture with other weights exports nothing and matches eager."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    ids = torch.randint(0, 100, (2, 8))
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = transformers.BertModel(config).eval()
        compiled = kiln.compile(
            model, [], kwarg_inputs={"input_ids": ids}, device="cpu", cache_dir=tmp_path
        )
        with torch.no_grad():
            got, want = compiled(input_ids=ids), model(input_ids=ids)
        assert type(got) is type(want)
        torch.testing.assert_close(
            got.last_hidden_state, want.last_hidden_state, rtol=1e-4, atol=1e-4
        )
    assert len(exports) == 1
