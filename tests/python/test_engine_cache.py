"""The engine cache (kiln.compile's cache_dir): a second compile of the same graph refits the
cached engines with its own weights instead of building; corrupt entries are rebuilt; the size
limit drops the least recently used; two processes filling one directory at once both succeed
and leave one valid entry. These tests turn the compiled-module cache off (KILN_MODULE_CACHE=0:
it would answer the second compile before the engines are looked up); test_module_cache.py tests
that one, and the two-process test here runs with both."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import kiln
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _net(seed, width=16):
    torch.manual_seed(seed)
    net = Net(width).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(autouse=True)
def engine_layer_only(monkeypatch):
    monkeypatch.setenv("KILN_MODULE_CACHE", "0")


@pytest.fixture
def log():
    messages = []
    kiln.set_log_level("info")
    kiln.set_log_sink(lambda severity, message: messages.append(message))
    yield messages
    kiln.set_log_sink(None)
    kiln.set_log_level("warning")


def _entries(path):
    return sorted(p for p in os.listdir(path) if p.endswith(".kiln-engine"))


def _compile(model, x, cache_dir, **kwargs):
    return kiln.compile(model, [x], device="cpu", min_block_size=1, cache_dir=cache_dir, **kwargs)


def test_second_compile_is_a_cache_hit_with_its_own_weights(tmp_path, log):
    x = torch.randn(2, 3, 8, 8)
    first = _compile(_net(0), x, tmp_path)
    assert len(_entries(tmp_path)) == 1
    assert not any("engine cache: hit" in m for m in log)
    other = _net(1)
    second = _compile(other, x, tmp_path)
    assert any("engine cache: hit" in m for m in log)
    assert len(_entries(tmp_path)) == 1
    with torch.no_grad():
        uncached = _compile(other, x, False)(x)
        assert torch.equal(second(x), uncached)  # the refitted cached engine, bit for bit
        torch.testing.assert_close(second(x), other(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(first(x), second(x))


def test_other_options_or_shapes_are_other_entries(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    _compile(_net(0), x, tmp_path, enabled_precisions={torch.float16})
    _compile(_net(0), torch.randn(4, 3, 8, 8), tmp_path)
    _compile(_net(0, width=8), x, tmp_path)
    assert len(_entries(tmp_path)) == 4


def test_build_environment_settings_are_other_entries(tmp_path, monkeypatch):
    # KILN_SKIP_PASSES and KILN_CUDNN_GRAPH change what a build makes: an entry built under one
    # setting does not answer a build under another.
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    monkeypatch.setenv("KILN_SKIP_PASSES", "fuse_conv_epilogue")
    _compile(_net(0), x, tmp_path)
    monkeypatch.delenv("KILN_SKIP_PASSES")
    monkeypatch.setenv("KILN_CUDNN_GRAPH", "1")
    _compile(_net(0), x, tmp_path)
    assert len(_entries(tmp_path)) == 3
    _compile(_net(0), x, tmp_path)  # the same setting again: a hit
    assert len(_entries(tmp_path)) == 3


def test_corrupt_entry_is_ignored_with_a_warning_and_rebuilt(tmp_path, log):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, tmp_path)
    (entry,) = _entries(tmp_path)
    path = tmp_path / entry
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    model = _net(2)
    compiled = _compile(model, x, tmp_path)
    assert any("ignoring and removing" in m for m in log), log
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert len(path.read_bytes()) == len(data)  # rebuilt and stored again
    path.write_bytes(b"not a cache entry at all")
    with torch.no_grad():
        torch.testing.assert_close(_compile(model, x, tmp_path)(x), model(x), rtol=1e-4, atol=1e-4)


def test_size_limit_drops_the_least_recently_used(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0, width=8), x, tmp_path)
    (small,) = _entries(tmp_path)
    size = os.path.getsize(tmp_path / small)
    _compile(_net(0, width=16), x, tmp_path, cache_size=size * 3)
    assert len(_entries(tmp_path)) == 2
    _compile(_net(0, width=24), x, tmp_path, cache_size=int(size * 2.5))
    kept = _entries(tmp_path)
    assert small not in kept and len(kept) <= 2


def test_cache_off(tmp_path, monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    _compile(_net(0), x, False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("KILN_ENGINE_CACHE", "0")
    _compile(_net(0), x, True)
    assert not (tmp_path / "kiln" / "engines").exists()
    monkeypatch.setenv("KILN_ENGINE_CACHE", "1")
    _compile(_net(0), x, True)
    assert len(_entries(tmp_path / "kiln" / "engines")) == 1


def test_two_processes_at_once_leave_one_valid_entry(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {os.path.join(ROOT, "tests", "python")!r})
        import kiln
        from test_engine_cache import _net
        model = _net(int(sys.argv[1]))
        x = torch.randn(2, 3, 8, 8)
        compiled = kiln.compile(model, [x], device="cpu", min_block_size=1,
                                cache_dir=sys.argv[2])
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        print("ok")
        """
    )
    env = dict(os.environ, KILN_ENGINE_CACHE="1", KILN_MODULE_CACHE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(seed), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (3, 4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "ok" in out, err[-2000:]
    assert len(_entries(tmp_path)) == 1
    assert len([p for p in os.listdir(tmp_path) if p.endswith(".kiln-module")]) == 1
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]  # no leftovers
    model = _net(5)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(_compile(model, x, tmp_path)(x), model(x), rtol=1e-4, atol=1e-4)
