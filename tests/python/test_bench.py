"""bench/run.py on the CPU: a tiny model through the whole matrix machinery (eager and Kiln on the
reference backend), the statistics, the table/JSON/PNG writers, the time budget, and a Kiln
compile failure that must still give a row."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import kiln
import kiln.runner

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("kiln_bench_run", ROOT / "bench" / "run.py")
zoo = sys.modules["models"]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(h)


def _images(batch, device):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, 8, 8, generator=g).to(device),)


TINY = zoo.ModelEntry("tiny", lambda: Tiny().eval(), _images)


@pytest.fixture
def tiny_zoo(monkeypatch):
    monkeypatch.setitem(zoo.MODELS, "tiny", TINY)


class FakeCudaMemory:
    """torch.cuda's memory counters, driven by the test: `allocated` now, the peak since the
    last reset. measure() is called with a fake time_runs that allocates and frees."""

    def __init__(self, monkeypatch, allocated):
        self.allocated, self.peak = allocated, allocated
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset)

    def reset(self, device=None):
        self.peak = self.allocated

    def change(self, nbytes):
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)


MIB = 2**20


@pytest.mark.parametrize(
    "setup,transient,resident,freed",
    [
        (300 * MIB, 50 * MIB, 300, None),  # weights/state 300 MiB, activations 50 MiB
        (-33 * MIB, 4 * MIB, 0, 33),  # setup freed 33 MiB of the baseline: not a negative peak
        (0, 0, 0, None),
    ],
)
def test_measure_memory_parts(monkeypatch, setup, transient, resident, freed):
    mem = FakeCudaMemory(monkeypatch, allocated=100 * MIB)  # the input sets
    base = torch.cuda.memory_allocated()
    mem.change(setup)

    def fake_time_runs(fn, input_sets, runs, warmup, device, before_timing=None):
        mem.change(7 * MIB)  # a warm-up call's transient memory, freed before timing
        mem.change(-7 * MIB)
        before_timing()
        mem.change(transient)
        mem.change(-transient)
        return [1.0] * runs

    monkeypatch.setattr(bench, "time_runs", fake_time_runs)
    m = bench.measure(None, [()], 1, 5, 1, torch.device("cuda"), base)
    assert m.extra["resident_mib"] == resident
    assert m.extra["inference_mib"] == transient / MIB
    assert m.peak_mem_mib == resident + transient / MIB >= 0
    assert m.extra.get("baseline_freed_mib") == freed


def test_summarize_and_compare():
    s = bench.summarize([4.0, 1.0, 3.0, 2.0, 5.0], batch=10)
    assert s["latency_ms"] == 3.0
    assert s["latency_p10_ms"] == pytest.approx(1.4)
    assert s["latency_p90_ms"] == pytest.approx(4.6)
    assert s["throughput"] == pytest.approx(10 * 1000 / 3.0)
    assert bench.summarize([2.0, 4.0], batch=1)["latency_ms"] == 3.0
    with pytest.raises(ValueError):
        bench.summarize([], batch=1)

    a = torch.tensor([1.0, 2.0, 3.0])
    assert bench.compare(a, a) == (0.0, pytest.approx(1.0))
    err, cos = bench.compare(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert err == 1.0 and cos == pytest.approx(0.0)
    err, cos = bench.compare(
        torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([1.0, 2.5])
    )
    assert err == pytest.approx(0.5) and 0.99 < cos < 1.0
    with pytest.raises(ValueError, match="shape"):
        bench.compare(torch.zeros(2), torch.zeros(3))


def test_budget():
    b = bench.Budget(deadline_s=0.0, per_model_s=10.0)
    assert b.allows("m", 5.0) is None
    b.charge("m", 6.0)
    assert "per model" in b.allows("m")  # the estimate is the last compile: 6 + 6 > 10
    assert b.allows("other") is None or "per model" in b.allows("other")
    d = bench.Budget(deadline_s=1.0, per_model_s=0.0)
    assert "deadline" in d.allows("m", 5.0)
    assert d.allows("m", 0.0) is None


def test_input_sets_rotate_and_cast():
    sets = bench.make_input_sets(TINY, 2, torch.device("cpu"), "fp16")
    assert len(sets) == bench.NUM_INPUT_SETS
    assert all(s[0].dtype == torch.float16 and s[0].shape == (2, 3, 8, 8) for s in sets)
    assert not torch.equal(sets[0][0], sets[1][0])
    assert torch.equal(sets[0][0], _images(2, "cpu")[0].half())
    tokens = zoo.ModelEntry("t", None, lambda b, d: (torch.randint(0, 50, (b, 4)),))
    for s in bench.make_input_sets(tokens, 3, torch.device("cpu"), "fp16"):
        assert s[0].dtype == torch.int64 and int(s[0].max()) < 50


def test_main_cpu_writes_table_json_png(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "out"
    rc = bench.main(
        [
            "--models",
            "tiny",
            "--precisions",
            "fp32",
            "--batches",
            "1,2",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--deadline",
            "0",
            "--warm-build",
            "tiny",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads((out / "results.json").read_text())
    for r in data["rows"]:  # plan load and a second build, reported per Kiln row
        assert r["systems"]["kiln"]["extra"]["load_ms"] > 0
        assert r["systems"]["kiln"]["extra"]["warm_build_s"] > 0
    assert "Kiln plan load ms" in (out / "results.md").read_text()
    assert [(r["model"], r["precision"], r["batch"]) for r in data["rows"]] == [
        ("tiny", "fp32", 1),
        ("tiny", "fp32", 2),
    ]
    for r in data["rows"]:
        assert r["ran"]
        assert r["systems"]["eager"]["status"] == "ok"
        k = r["systems"]["kiln"]
        assert k["status"] == "ok", k
        assert k["extra"]["engines"] == 1 and k["extra"]["fallbacks"] == 0
        assert k["latency_ms"] > 0 and k["compile_s"] > 0
        assert k["throughput"] == pytest.approx(r["batch"] * 1000 / k["latency_ms"])
        # The reference backend computes in FP32: close to eager.
        assert r["cosine"] > 0.99999 and r["max_abs_err"] < 1e-4
        assert r["systems"]["compile"]["status"] == "skipped"
        assert r["speedup"]["eager"] == pytest.approx(
            r["systems"]["eager"]["latency_ms"] / k["latency_ms"]
        )
    assert data["meta"]["truth"].startswith("FP32 eager")
    assert (
        data["meta"]["source"] == kiln.runner.source_commit()
    )  # which Kiln source the rows measured
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert md.count("| tiny | fp32 |") == 4  # two rows in each of the two tables
    # The table is printed last.
    assert printed.rstrip().endswith(md.rstrip().splitlines()[-1])
    assert "2/2 rows ran" in printed


def test_int8_row_is_calibrated_in_the_fp16_model(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--models", "tiny", "--precisions", "int8", "--batches", "2", "--runs", "5"]
    argv += ["--warmup", "1", "--device", "cpu", "--out", str(out), "--deadline", "0"]
    rc = bench.main(argv)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["precision"] == "int8" and row["ran"]
    k = row["systems"]["kiln"]
    assert k["status"] == "ok" and k["extra"]["engines"] == 1, k
    assert "refit_ms" not in k["extra"]  # calibrated weights do not refit
    # Quantized, so near the FP32 truth but not at it.
    assert 0.99 < row["cosine"] < 1.0 and row["max_abs_err"] > 0
    assert "| tiny | int8 |" in (out / "results.md").read_text()
    # Its torchao peer runs with the other torch.compile peers, on CUDA only.
    assert row["systems"]["torchao"]["status"] == "skipped"
    assert "x torchao" in (out / "results.md").read_text()


def test_jobs_run_each_unit_in_a_worker_and_merge_the_rows(tiny_zoo, tmp_path, monkeypatch, capsys):
    """--jobs 2: each model x precision in a worker process of its own (here a stub that adds the
    tiny model to the zoo, then runs this script), taking GPU turns by the lock file the parent
    names; the parent merges their rows in matrix order into one table. A worker that dies gives
    its rows an error, and the run fails."""
    stub = tmp_path / "worker.py"
    stub.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_bench\n"
        "test_bench.zoo.MODELS['tiny'] = test_bench.TINY\n"
        "assert test_bench.bench.GPU_LOCK_ENV in __import__('os').environ\n"
        "sys.exit(test_bench.bench.main(sys.argv[1:]))\n"
    )
    monkeypatch.setattr(bench, "WORKER", [sys.executable, str(stub)])
    out = tmp_path / "out"
    argv = ["--models", "tiny", "--precisions", "fp32,fp16", "--batches", "1,2", "--runs", "3"]
    argv += ["--warmup", "1", "--device", "cpu", "--out", str(out), "--deadline", "0"]
    argv += ["--warm-build", "", "--jobs", "2"]
    rc = bench.main(argv)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["jobs"] == 2
    got = [(r["model"], r["precision"], r["batch"]) for r in data["rows"]]
    assert got == [("tiny", p, b) for p in ("fp32", "fp16") for b in (1, 2)]
    for r in data["rows"]:
        assert r["ran"] and r["systems"]["kiln"]["extra"]["engines"] == 1, r
        assert r["cosine"] > 0.999
    for unit in ("tiny_fp32", "tiny_fp16"):  # each worker's own rows and log
        assert (out / "parts" / unit / "results.json").exists()
    assert printed.count("worker started") == 2
    assert "tiny fp16 b2: eager " in printed and ", kiln " in printed  # a line per row
    assert md_rows(out) == 4

    monkeypatch.setattr(bench, "WORKER", [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert bench.main(argv) == 1
    data = json.loads((out / "results.json").read_text())
    for r in data["rows"]:
        assert not r["ran"]
        assert r["systems"]["kiln"]["error"].startswith("worker exited with status 3"), r


def test_jobs_keep_what_a_killed_worker_measured(tiny_zoo, tmp_path, monkeypatch, capsys):
    """A worker still running past the deadline (plus the grace) is killed; the rows it wrote
    (after every cell) stay, the cells it never reached and the rows it never began say why."""
    stub = tmp_path / "worker.py"
    stub.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_bench\n"
        "bench = test_bench.bench\n"
        "out = bench.Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "row = bench.Row('tiny', 'fp32', 1)\n"
        "row.systems['eager'] = bench.Measurement('ok', latency_ms=1.0)\n"
        "row.systems['kiln'] = bench.Measurement('ok', latency_ms=0.5)\n"
        "bench.write_json([row], out / 'results.json', {})\n"
        "time.sleep(120)\n"
    )
    monkeypatch.setattr(bench, "WORKER", [sys.executable, str(stub)])
    monkeypatch.setattr(bench, "KILL_GRACE_S", 10.0)
    out = tmp_path / "out"
    argv = ["--models", "tiny", "--precisions", "fp32", "--batches", "1,2", "--device", "cpu"]
    argv += ["--out", str(out), "--deadline", "1", "--jobs", "2"]
    assert bench.main(argv) == 1  # the batch-2 row never ran
    assert "worker killed" in capsys.readouterr().out
    first, second = json.loads((out / "results.json").read_text())["rows"]
    assert (
        first["systems"]["kiln"]["status"] == "ok" and first["systems"]["kiln"]["latency_ms"] == 0.5
    )
    assert first["systems"]["compile"]["error"] == "worker killed past the run's deadline"
    assert second["batch"] == 2 and not second["ran"]
    assert second["systems"]["kiln"]["error"] == "worker killed past the run's deadline"


def test_merge_runs_into_one_table(tiny_zoo, tmp_path, capsys):
    """--merge: runs of a matrix split over calls become one table; a later run's row replaces an
    earlier one of the same model, precision and batch; the roofline uses the first run's peaks
    and says whose; a file that is no results.json is refused."""
    base = ["--models", "tiny", "--runs", "3", "--warmup", "1", "--device", "cpu"]
    base += ["--deadline", "0", "--warm-build", ""]
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert bench.main([*base, "--precisions", "fp32", "--batches", "1,2", "--out", str(a)]) == 0
    assert bench.main([*base, "--precisions", "fp16,fp32", "--batches", "2", "--out", str(b)]) == 0
    first = json.loads((a / "results.json").read_text())
    first["meta"]["peaks"] = dict(device="X", fp16_tflops=100.0, fp32_tflops=50.0, gbps=1000.0)
    (a / "results.json").write_text(json.dumps(first))
    capsys.readouterr()
    paths = [str(a / "results.json"), str(b / "results.json")]
    assert bench.main(["--merge", *paths, "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "3/3 rows ran (2 runs merged)" in printed
    data = json.loads((merged / "results.json").read_text())
    got = [(r["model"], r["precision"], r["batch"]) for r in data["rows"]]
    assert got == [("tiny", "fp32", 1), ("tiny", "fp32", 2), ("tiny", "fp16", 2)]
    replaced = json.loads((b / "results.json").read_text())["rows"][1]
    assert replaced["precision"] == "fp32" and data["rows"][1] == replaced  # b's row, not a's
    assert data["meta"]["merged"] == paths
    md = (merged / "results.md").read_text()
    assert f"peaks measured in the run of {paths[0]}" in md
    assert (merged / "results.png").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert bench.main(["--merge", str(tmp_path / "bad.json"), "--out", str(merged)]) == 2


def md_rows(out: Path) -> int:
    """Rows of the first table of results.md."""
    first = (out / "results.md").read_text().split("\n\n")[1]
    return sum(1 for line in first.splitlines() if line.startswith("| tiny |"))


def test_torchao_peer_quantizes_the_linear_layers():
    pytest.importorskip("torchao.quantization")
    assert bench.torchao_unavailable("fp16") == "int8 rows only"
    assert bench.torchao_unavailable("int8") is None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    quantized = bench.torchao_int8(model.eval(), torch.device("cpu"))
    assert type(quantized[0].weight) is not torch.nn.Parameter  # torchao's int8 tensor
    assert type(model[0].weight) is torch.nn.Parameter  # a copy was quantized
    x = torch.randn(16, 64)
    with torch.no_grad():
        want, got = model(x), quantized(x)
    assert 0 < (got - want).abs().max().item() < 0.05


def test_kiln_failure_still_gives_a_row(tiny_zoo, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise kiln.KilnError("converter exploded " + "x" * 500)

    monkeypatch.setattr(kiln, "compile", broken, raising=False)
    rc = bench.main(
        [
            "--models",
            "tiny",
            "--precisions",
            "fp32",
            "--batches",
            "1",
            "--runs",
            "3",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--skip-peers",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 1
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert not row["ran"]
    assert row["systems"]["eager"]["status"] == "ok"
    kiln_cell = row["systems"]["kiln"]
    assert kiln_cell["status"] == "error"
    assert "converter exploded" in kiln_cell["error"]
    assert len(kiln_cell["error"]) <= bench.ERROR_CHARS
    assert "Kiln: KilnError: converter exploded" in printed and "ERR" in printed
    assert "0/1 rows ran" in printed


def test_plan_rows_saved(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "PLAN_ROWS", {("tiny", "fp32", 1)})
    rc = bench.main(
        [
            "--models",
            "tiny",
            "--precisions",
            "fp32",
            "--batches",
            "1",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--plans",
            str(tmp_path / "plans"),
        ]
    )
    assert rc == 0
    plans = sorted((tmp_path / "plans").glob("*.plan"))
    assert [p.name for p in plans] == ["tiny_fp32_b1_engine0.plan"]
    info = kiln.inspect(plans[0])
    assert any(la.op == "convolution" for la in info.layers)


def test_unknown_model_and_precision(capsys):
    assert bench.main(["--models", "nope", "--device", "cpu"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert bench.main(["--models", "resnet50", "--precisions", "int4", "--device", "cpu"]) == 2


@pytest.mark.gpu
def test_main_cuda_all_systems(tiny_zoo, tmp_path):
    """The GPU path end to end on the tiny model: every system measured, memory accounted."""
    out = tmp_path / "out"
    rc = bench.main(
        [
            "--models",
            "tiny",
            "--precisions",
            "fp32,fp16",
            "--batches",
            "1",
            "--runs",
            "10",
            "--warmup",
            "2",
            "--out",
            str(out),
            "--deadline",
            "0",
            "--compile-budget",
            "0",
        ]
    )
    data = json.loads((out / "results.json").read_text())
    assert rc == 0, data
    for r in data["rows"]:
        # torchao's INT8 is the peer of INT8 rows only.
        assert r["systems"]["torchao"] == {**r["systems"]["torchao"], "status": "skipped"}
        systems = [name for name in bench.SYSTEMS if name != "torchao"]
        for name in systems:
            m = r["systems"][name]
            assert m["status"] == "ok", (name, m)
            assert m["latency_ms"] > 0 and m["peak_mem_mib"] > 0
        k = r["systems"]["kiln"]["extra"]
        assert k["engines"] == 1 and k["fallbacks"] == 0
        assert k["external_mib"] >= 0 and k["plan_device_mib"] > 0
        for name in systems:
            extra = r["systems"][name]["extra"]
            assert extra["resident_mib"] > 0 and extra["inference_mib"] >= 0, (name, extra)
            assert "baseline_freed_mib" not in extra, (name, extra)
        assert r["cosine"] > (0.9999 if r["precision"] == "fp32" else 0.999)
        assert r["speedup"]["compile"] is not None


def test_calibration_bench_times_each_algorithm_on_the_cpu(capsys):
    # bench/calibration.py: the compile with calibration, the one from the cache it wrote, and
    # their difference, per algorithm (a small model and few images on the reference backend).
    calibration = _load("kiln_bench_calibration", ROOT / "bench" / "calibration.py")
    argv = ["--device", "cpu", "--model", "resnet18", "--images", "2", "--batch", "2"]
    assert calibration.main([*argv, "--algorithms", "minmax,entropy"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["minmax", "entropy"]
    for row in rows[1:]:
        total, cached, calibrated = (float(c) for c in row.split("|")[2:5])
        assert total > 0 and cached > 0
        assert calibrated == pytest.approx(total - cached, abs=0.011)
