"""tools/model_check.py on the CPU: one small model through compile (reference backend), the
comparison with eager, save/load in both formats and the table; the C++ app too when
tests/python/test_cpp_deploy.py has already built it."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


mc = _load("kiln_model_check", ROOT / "tools" / "model_check.py")
zoo = sys.modules["models"]

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _inputs(batch, device):
    return (torch.randn(batch, 3, 10, 10, generator=torch.Generator().manual_seed(3)).to(device),)


SMALL = zoo.ModelEntry("small", lambda: Small().eval(), _inputs)


def test_check_one_model_cpu(tmp_path):
    r = mc.check(SMALL, "fp32", torch.device("cpu"), tmp_path, cpp_exe=None)
    assert r.error == ""
    assert (r.engines, r.fallbacks) == (1, 0)
    assert r.cosine > 0.99999 and r.max_abs_err < 1e-4
    assert r.save_load == "yes"
    assert r.cpp == "skipped"
    assert r.status == "PASS"
    assert (tmp_path / "small_fp32.ts").exists() and (tmp_path / "small_fp32.pt2").exists()


def test_decide_and_table():
    r = mc.Result(
        "m",
        "fp16",
        engines=2,
        fallbacks=3,
        fallback_ops=["aten.erf.default"],
        cosine=0.9995,
        max_abs_err=1e-2,
        save_load="yes",
        cpp="yes",
    )
    r.decide()
    assert r.status == "FAIL"  # 2 engines, 3 fallbacks
    r.engines, r.fallbacks = 1, 0
    r.decide()
    assert r.status == "PASS"  # 0.9995 >= 0.999 for FP16
    r.precision = "fp32"
    r.decide()
    assert r.status == "FAIL"  # but not >= 0.9999 for FP32
    table = mc.markdown([r])
    assert table.splitlines()[0].startswith("| model | precision | engines | fallbacks")
    assert "| m | fp32 | 1 | 0 | 0.999500 |" in table and "FAIL" in table
    assert "cosine < 0.9999" in table


def test_failure_is_reported_not_raised(tmp_path):
    def boom():
        raise RuntimeError("cannot build")

    r = mc.check(zoo.ModelEntry("boom", boom, _inputs), "fp32", torch.device("cpu"), tmp_path, None)
    assert r.status == "FAIL" and "cannot build" in r.error


def test_main_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(zoo.MODELS, "small", SMALL)
    rc = mc.main(
        [
            "--models",
            "small",
            "--precisions",
            "fp32",
            "--device",
            "cpu",
            "--no-cpp",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.rstrip().splitlines()[-1].startswith("| small | fp32 | 1 | 0 |")
    assert json.loads((tmp_path / "model_check.json").read_text())[0]["status"] == "PASS"
    assert mc.main(["--models", "nope", "--device", "cpu"]) == 2


def test_cpp_app(tmp_path):
    exe = mc.build_cpp_app()  # incremental when test_cpp_deploy built it already
    r = mc.check(SMALL, "fp32", torch.device("cpu"), tmp_path, cpp_exe=exe)
    assert r.cpp == "yes", r.cpp
    assert r.status == "PASS"


def test_zoo_rows_whose_eager_fp16_misses_the_bar_are_judged_against_eager_fp16():
    zc = _load("kiln_zoo_check", ROOT / "tools" / "zoo_check.py")
    entry = zc.ZooModel("m", lambda: None, lambda device: ())

    def decide(cosine, eager_cosine, speedup_ms=(1.0, 1.2)):
        row = zc.ZooRow("m", "fp16", engines=1, fallbacks=0, cosine=cosine)
        row.eager_cosine, (row.kiln_ms, row.peer_ms) = eager_cosine, speedup_ms
        return zc._decide(entry, row), row.judged

    # inception_v3's figures from the H200: eager FP16 0.998676, Kiln 0.998337 (1.28x its error)
    assert decide(0.998337, 0.998676) == (
        "PASS",
        "against eager fp16 (its own cosine misses 0.999)",
    )
    assert decide(0.996, 0.998676)[0] == "FAIL"  # 3x eager's error
    assert decide(0.9985, 0.9999) == ("FAIL", "")  # eager meets the bar: so must Kiln
    assert decide(0.99995, 0.99999) == ("PASS", "")
    assert decide(0.999, 0.9987, speedup_ms=(1.2, 1.0))[0] == "FAIL"  # slower than the peer


def test_zoo_counts_a_rebuilt_dynamo_graph_once():
    """A graph the backend rebuilt for new sizes logs a report per build: its last counts."""
    zc = _load("kiln_zoo_check", ROOT / "tools" / "zoo_check.py")
    log = [
        "kiln backend: compiled a dynamo graph (graph 1): 2 engine segments, 1 node in PyTorch",
        "kiln backend: compiled a dynamo graph (graph 2): 1 engine segment, 0 nodes in PyTorch",
        "kiln backend: building for this call's sizes only: ...",
        "kiln backend: compiled a dynamo graph (graph 1): 1 engine segment, 0 nodes in PyTorch",
    ]
    assert zc._graph_reports(log) == [log[3], log[1]]


def test_zoo_rows_say_which_source_and_device_ran_them(tmp_path, monkeypatch):
    """Rows of several runs merge into one table: each row names the Kiln source (a commit,
    "+changes" for an edited tree, or $KILN_SOURCE_COMMIT where the tree has no .git) and the
    device it ran on, and the merge keeps them."""
    from kiln.runner import SOURCE_ENV

    zc = _load("kiln_zoo_check", ROOT / "tools" / "zoo_check.py")
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    here = zc.source_commit()
    assert here == "" or len(here.split("+")[0]) == 10, here
    monkeypatch.setenv(SOURCE_ENV, "abc1234567")
    assert zc.source_commit() == "abc1234567"
    assert zc.hardware_name(torch.device("cpu")) == "cpu"
    rows = [
        zc.ZooRow("a", "fp16", status="PASS", source="abc1234567", device="NVIDIA H200"),
        zc.ZooRow("b", "fp16", status="PASS", source="def7654321", device="NVIDIA H100 80GB HBM3"),
    ]
    paths = []
    for i, r in enumerate(rows):
        path = tmp_path / f"part{i}.json"
        path.write_text(json.dumps([dataclasses.asdict(r)]))
        paths.append(str(path))
    table = zc.merge(paths)
    assert "NVIDIA H200, abc1234567 |" in table and "NVIDIA H100 80GB HBM3, def7654321 |" in table
    # JSON written before these fields existed still merges.
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"model": "c", "precision": "fp32", "status": "PASS"}]))
    assert "| c | fp32 |" in zc.merge([str(old)])


def test_zoo_fp32_rows_run_in_worker_processes_and_a_failing_worker_fails_its_row_only(capsys):
    pytest.importorskip("transformers")
    zc = _load("kiln_zoo_check", ROOT / "tools" / "zoo_check.py")
    rc = zc.run(
        "hf-decoders",
        "GPT2LMHeadModel",
        ["fp32"],
        torch.device("cpu"),
        0.0,
        False,
        False,
        None,
        jobs=2,
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| GPT2LMHeadModel | fp32 | 1 | 0 | 1.000000 | - | - |" in out
    # --gpus: every row in a worker with CUDA_VISIBLE_DEVICES of its own (on the CPU: untimed).
    rc = zc.run(
        "hf-decoders", "T5Model", ["fp32"], torch.device("cpu"), 0.0, False, False, None, gpus=2
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| T5Model | fp32 | 1 | 0 | 1.000000 | - | - |" in out
    # A worker that dies (here: a model the zoo does not have) gives its row an error.
    missing = zc.ZooModel("NoSuchModel", lambda: None, lambda device: ())
    row = zc._row_in_worker("hf-decoders", missing, "fp32", torch.device("cpu"), False, 0.0, 0.0)
    assert row.status == "FAIL" and "worker exited with status 1" in row.error, row


def test_zoo_gpu_turns_of_worker_processes_do_not_overlap(tmp_path):
    """--jobs N on one GPU: the timed workers hold the GPU in turns (gpu_turn, a file lock named by
    KILN_GPU_LOCK); three processes each hold a turn for 0.4 s and log when they enter and
    leave it: no turn starts before the one in progress has ended."""
    import os
    import subprocess

    log = tmp_path / "turns.log"
    source = str(ROOT / "tools" / "zoo_check.py")
    script = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('zc', {source!r})\n"
        "zc = sys.modules['zc'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(zc)\n"
        "with zc.gpu_turn():\n"
        f"    open({str(log)!r}, 'a').write(f'in {{time.monotonic()}}\\n')\n"
        "    time.sleep(0.4)\n"
        f"    open({str(log)!r}, 'a').write(f'out {{time.monotonic()}}\\n')\n"
    )
    env = dict(os.environ, KILN_GPU_LOCK=str(tmp_path / "gpu.lock"))
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(3)]
    assert all(w.wait(timeout=120) == 0 for w in workers)
    events = sorted(
        (float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())
    )
    assert [kind for _, kind in events] == ["in", "out"] * 3, events


def test_zoo_shards_split_the_models_and_merge_into_one_table(tmp_path, capsys):
    pytest.importorskip("transformers")
    zc = _load("kiln_zoo_check", ROOT / "tools" / "zoo_check.py")
    assert zc.parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/"):
        with pytest.raises(ValueError):
            zc.parse_shard(bad)
    models = "GPT2LMHeadModel,T5Model"  # zoo order: GPT2 before T5
    for k in (1, 2):
        argv = ["--zoo", "hf-decoders", "--models", models, "--precisions", "fp32"]
        argv += ["--device", "cpu", "--no-peer", "--shard", f"{k}/2", "--out", str(tmp_path)]
        assert mc.main(argv) == 0
    capsys.readouterr()
    shards = sorted(str(p) for p in tmp_path.glob("zoo_hf-decoders_shard*of2.json"))
    assert len(shards) == 2
    assert [r["model"] for r in json.loads(Path(shards[0]).read_text())] == ["GPT2LMHeadModel"]
    assert mc.main(["--merge", *shards]) == 0
    table = capsys.readouterr().out
    assert "| GPT2LMHeadModel | fp32 | 1 | 0 |" in table and "| T5Model | fp32 | 1 | 0 |" in table
    assert mc.main(["--zoo", "hf-decoders", "--shard", "3/2", "--device", "cpu"]) == 2
