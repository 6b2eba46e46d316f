"""Regressions from the reliability review (issue 14), each named after what it broke. CPU
reference backend; each failed before its fix."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from layer_util import DEVICES, as_cpu_tensor, build_plan, device_of

import kiln
from kiln import runtime as rt

needs_runtime = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")


@needs_runtime
def test_compile_leaves_the_callers_training_modes_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 4))
    model.train()
    model[1].eval()  # a mix of modes, as fine-tuning code leaves them
    before = [m.training for m in model.modules()]
    x = torch.randn(6, 8)
    compiled = kiln.compile(model, [x], device="cpu", min_block_size=1)
    assert [m.training for m in model.modules()] == before
    # The engine computes the inference forward (dropout off, running statistics).
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_mark_output_of_an_input_is_refused_not_renamed():
    # It used to rename the input to the output's name (the input binding "x" was gone), and an
    # input marked as output failed at execute time ("no address set").
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    for name in ("y", ""):
        with pytest.raises(kiln.KilnError, match="'x' is a network input.*add_identity"):
            net.mark_output(x, name)
    net.mark_output(net.add_identity(x), "x_out")
    net.mark_output(net.add_activation(x, "relu"), "y")
    plan = kiln.Builder().build(net, kiln.BuilderConfig(device="cpu"))
    engine = kiln.Engine(plan, "cpu")
    assert engine.input_names == ["x"]
    out = engine.create_execution_context().execute({"x": -np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["x_out"], -np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(out["y"], np.zeros((2, 3), np.float32))


class _Payload:
    """A pickle that, when loaded, creates a file: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved_pt2(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    compiled = kiln.compile(model, [torch.randn(2, 8)], device="cpu", min_block_size=1)
    path = tmp_path / "good.pt2"
    kiln.save(compiled, path)
    return path


def _with_pickled_weight(src, dst, payload: bytes, compress_type=None):
    """A copy of the archive with one more weight marked use_pickle, holding `payload` (stored, as
    torch writes entries, unless compress_type says otherwise)."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["extra"] = {
                    "path_name": "weight_extra",
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }
                data = json.dumps(config).encode()
                folder = item.filename.rsplit("/", 1)[0]
            zout.writestr(item, data)
        zout.writestr(f"{folder}/weight_extra", payload, compress_type=compress_type)


@needs_runtime
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_load_refuses_a_pt2_whose_pickle_runs_code(tmp_path, compressed):
    # torch.export.load unpickles use_pickle weights with the full unpickler: this file used to
    # load normally and create the marker on the way. A stored inner zip is read in place (a
    # window onto the archive), a deflated one decompressed: both are checked.
    import io
    import zipfile

    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    evil = tmp_path / "evil.pt2"
    compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    _with_pickled_weight(_saved_pt2(tmp_path), evil, buffer.getvalue(), compress_type)
    with pytest.raises(kiln.KilnError, match=r"weight_extra .*calls _?io\.open.*trusted=True"):
        kiln.load(evil)
    assert not marker.exists()
    kiln.load(evil, trusted=True)  # the caller's word: torch loads it, payload and all
    assert marker.exists()


@needs_runtime
def test_load_refuses_a_raw_protocol_4_pickle(tmp_path):
    # Not torch.save's zip format: a bare pickle whose STACK_GLOBAL names the callable.
    import pickle

    payload = pickle.dumps(_Payload(tmp_path / "ran"), protocol=4)
    evil = tmp_path / "evil.pt2"
    _with_pickled_weight(_saved_pt2(tmp_path), evil, payload)
    with pytest.raises(kiln.KilnError, match="weight_extra is a pickle that calls"):
        kiln.load(evil)
    assert not (tmp_path / "ran").exists()


@needs_runtime
def test_kiln_saved_files_pass_the_check(tmp_path):
    from kiln.trust import check_archive

    check_archive(str(_saved_pt2(tmp_path)))  # raises on anything it does not allow


@needs_runtime
def test_a_truncated_inner_zip_is_a_damaged_archive_not_a_crash(tmp_path):
    # The inner zip is opened in place through a window onto the outer file: a window shorter
    # than the zip it should hold (its central directory cut off) is a clean refusal.
    import io

    buffer = io.BytesIO()
    torch.save(torch.ones(3), buffer)
    evil = tmp_path / "cut.pt2"
    _with_pickled_weight(_saved_pt2(tmp_path), evil, buffer.getvalue()[:-40])
    with pytest.raises(kiln.KilnError, match="is a damaged zip archive"):
        kiln.load(evil)


@needs_runtime
def test_load_names_the_cause_of_a_broken_archive(tmp_path):
    # torch.export.load reported every failure as "We ran into an error when deserializing the
    # saved file", with the cause hidden in the chain.
    import zipfile

    good = _saved_pt2(tmp_path)
    broken = tmp_path / "broken.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("models/model.json"):
                data = data[: len(data) // 2]  # truncated JSON
            zout.writestr(item, data)
    with pytest.raises(kiln.KilnError, match=r"torch cannot load: \w+Error: ") as info:
        kiln.load(broken)
    assert "We ran into an error" not in str(info.value).split("torch cannot load: ")[1]


@needs_runtime
def test_cat_of_more_tensors_than_an_engine_takes_falls_back():
    # It failed compilation ("takes 1 to 1024 inputs") instead of running the cat in PyTorch.
    class ManyCat(nn.Module):
        def forward(self, x):
            return torch.cat([x * (k % 7) for k in range(1100)], dim=0).relu()

    x = torch.randn(2, 3)
    compiled = kiln.compile(ManyCat().eval(), [x], device="cpu", min_block_size=1)
    reasons = [f.reason for f in compiled.report.fallbacks if f.target == "aten.cat.default"]
    assert reasons and "at most 1024" in reasons[0]
    torch.testing.assert_close(compiled(x), ManyCat()(x))


@needs_runtime
@pytest.mark.parametrize("where", ["compiled", "loaded"])
def test_numpy_input_gets_a_message_that_says_what_to_pass(where, tmp_path):
    # A numpy array passed to a loaded module used to raise TypeError("'int' object is not
    # callable") from inside torch.
    path = _saved_pt2(tmp_path)
    module = kiln.load(path)
    if where == "compiled":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        module = kiln.compile(model, [torch.randn(2, 8)], device="cpu", min_block_size=1)
    with pytest.raises(kiln.KilnError, match=r"input 0 is a numpy.ndarray.*torch.from_numpy"):
        module(np.zeros((2, 8), np.float32))
    assert module(torch.zeros(2, 8)).shape == (2, 4)


@needs_runtime
def test_meta_input_is_refused(tmp_path):
    # It returned an uninitialized CPU tensor.
    for module in (kiln.load(_saved_pt2(tmp_path)),):
        with pytest.raises(kiln.KilnError, match="meta device"):
            module(torch.zeros(2, 8, device="meta"))


def _relu_add_net(width):
    """y = relu(x) + 1 over x [-1, width] (float32): one arena tensor between input and output."""
    net = kiln.Network()
    x = net.add_input("x", "float32", (-1, width))
    r = net.add_activation(x, "relu")
    net.mark_output(
        net.add_elementwise(r, net.add_constant(np.ones((1, width), np.float32)), "add"), "y"
    )
    return net


@pytest.mark.parametrize("device", DEVICES)
def test_context_allocates_for_the_shapes_in_use_not_the_profile_max(device):
    # A plan of a few KB whose profile allows [2^20, 1024] float32 (4 GiB per activation): a new
    # context used to allocate (and, on the CPU, zero) the whole arena up front.
    net = _relu_add_net(1024)
    plan = build_plan(net, device, level=0, profile={"x": ((1, 1024), (2, 1024), (1 << 20, 1024))})
    assert len(plan.serialize()) < 70_000 and plan.memory["arena_bytes"] >= 4 << 30
    engine = kiln.Engine(plan, device=device)
    ctx = engine.create_execution_context()
    assert ctx.arena_bytes == 0  # nothing before the first call
    for rows in (2, 8, 3):
        x = torch.randn(rows, 1024, device=device_of(device))
        y = as_cpu_tensor(ctx.execute({"x": x})["y"])
        torch.testing.assert_close(y, x.cpu().relu() + 1)
    assert ctx.arena_bytes == 8 * 1024 * 4  # grew to the largest shape used, then stayed
    with pytest.raises(kiln.KilnError, match="not an allocation strategy"):
        engine.create_execution_context(memory="everything")


def test_profile_max_context_allocates_at_creation():
    plan = build_plan(
        _relu_add_net(16), "cpu", level=0, profile={"x": ((1, 16), (2, 16), (64, 16))}
    )
    ctx = kiln.Engine(plan, device="cpu").create_execution_context(memory="profile_max")
    assert ctx.arena_bytes == plan.memory["arena_bytes"] >= 64 * 16 * 4
    x = torch.randn(5, 16)
    torch.testing.assert_close(ctx.execute({"x": x})["y"], x.relu() + 1)


@pytest.mark.parametrize("device", DEVICES)
def test_a_context_shared_by_threads_refuses_instead_of_corrupting(device):
    # Two threads calling execute on one context used to corrupt the heap (double free): the
    # calls release the GIL. Now the second concurrent caller gets a KilnError; every call that
    # ran returned the right answer.
    import threading

    plan = build_plan(_relu_add_net(256), device, profile={"x": ((1, 256), (64, 256), (512, 256))})
    ctx = kiln.Engine(plan, device=device).create_execution_context()
    results = {"ok": 0, "refused": 0, "wrong": 0, "other": []}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        start.wait()
        for _ in range(150):
            x = torch.randn(int(torch.randint(1, 512, (1,), generator=g)), 256, generator=g)
            try:
                y = ctx.execute({"x": x.to(device_of(device))})["y"]
                if device == "cuda":
                    torch.cuda.synchronize()
                key = "ok" if torch.equal(as_cpu_tensor(y), x.relu() + 1) else "wrong"
            except kiln.KilnError as e:
                key = (
                    "refused"
                    if "another thread is using this execution context" in str(e)
                    else None
                )
                if key is None:
                    with lock:
                        results["other"].append(str(e))
                    continue
            with lock:
                results[key] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["other"] == [] and results["wrong"] == 0
    assert results["ok"] > 0 and results["ok"] + results["refused"] == 8 * 150


@pytest.mark.parametrize("device", DEVICES)
def test_eight_threads_with_a_context_each_all_correct(device):
    # The supported way: one engine, a context per thread, all running at once.
    import threading

    plan = build_plan(_relu_add_net(256), device, profile={"x": ((1, 256), (64, 256), (512, 256))})
    engine = kiln.Engine(plan, device=device)
    failures = []

    def work(seed):
        ctx = engine.create_execution_context()
        g = torch.Generator().manual_seed(seed)
        stream = torch.cuda.Stream() if device == "cuda" else None
        for _ in range(200):
            x = torch.randn(int(torch.randint(1, 512, (1,), generator=g)), 256, generator=g)
            if stream is not None:
                with torch.cuda.stream(stream):
                    y = ctx.execute({"x": x.cuda()})["y"]
                stream.synchronize()
            else:
                y = ctx.execute({"x": x})["y"]
            if not torch.equal(as_cpu_tensor(y), x.relu() + 1):
                failures.append(seed)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_plan_header_is_covered_by_the_checksum():
    # The checksum covered only the body: a header edited in place (another Kiln version, GPU
    # architecture) loaded. The version checks themselves: tests/cpp/test_plan.cpp.
    plan = build_plan(_relu_add_net(4), "cpu", profile={"x": ((1, 4), (2, 4), (8, 4))})
    assert plan.header["format_version"] == 4
    engine = kiln.Engine(plan, device="cpu", allow_minor_version_mismatch=True)
    engine.create_execution_context().execute({"x": np.ones((2, 4), np.float32)})
    for at in (12, 16, 20, 24, 28):  # kiln, cuda, cublaslt, cudnn versions, sm_arch
        data = bytearray(plan.serialize())
        data[at] ^= 1
        with pytest.raises(kiln.KilnError, match="checksum mismatch"):
            kiln.Plan.deserialize(bytes(data))


@needs_runtime
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_through_an_engine_raise_instead_of_vanishing(device, tmp_path):
    # Outputs came back with requires_grad=True and backward() left x.grad None, silently.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval().to(device)
    compiled = kiln.compile(
        model, [torch.randn(2, 8, device=device)], device=device, min_block_size=1
    )
    kiln.save(compiled, tmp_path / "m.ts", output_format="torchscript")
    for module in (compiled, kiln.load(tmp_path / "m.ts")):
        x = torch.randn(2, 8, device=device, requires_grad=True)
        y = module(x)
        assert y.requires_grad
        with pytest.raises(RuntimeError, match="gradients cannot flow through a Kiln engine"):
            y.sum().backward()
        assert x.grad is None
        with torch.no_grad():
            assert not module(x).requires_grad
        torch.testing.assert_close(module(x.detach()), model(x.detach()), rtol=1e-4, atol=1e-4)


@needs_runtime
def test_engine_errors_from_a_compiled_module_are_kiln_errors():
    # They crossed torch's op dispatch as plain RuntimeErrors.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    compiled = kiln.compile(model, [torch.randn(2, 8)], device="cpu", min_block_size=1)
    with pytest.raises(kiln.KilnError, match="Kiln engine input .* has dtype"):
        compiled(torch.randn(2, 8, dtype=torch.float16))
