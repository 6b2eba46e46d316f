"""C++ deployment: examples/cpp (a LibTorch app linking Kiln::runtime from find_package(Kiln))
runs a Kiln engine saved from Python and gives Python's output exactly.

The app is configured and built with CMake against this checkout's Kiln (kiln.cmake_prefix_path)
and the installed torch (torch.utils.cmake_prefix_path) in build/examples_cpp, kept between runs
so rebuilds are incremental. The build holds /tmp/kiln-build.lock (as tools/dev_build.sh does),
so it never overlaps another build on this machine; the first build takes a minute or two (torch
headers). The engine runs on the reference backend with CPU tensors (CI) and on CUDA (gpu).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from layer_util import DEVICES

import kiln
import kiln.runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpp"
sys.path.insert(0, str(ROOT / "tools"))
from cpp_example import build_example  # noqa: E402 (tools/cpp_example.py)

PY_DIR = Path(kiln.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kiln_infer() -> Path:
    """examples/cpp built against this Kiln: the path of its kiln_infer executable."""
    exe = build_example("cpp") / "kiln_infer"
    assert exe.exists()
    return exe


def _infer(exe, model, inputs, output, device="cpu"):
    cmd = [str(exe), str(model), str(inputs), str(output), device]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=DEVICES)
def saved(request, tmp_path_factory):
    """(device, directory) with make_model.py's model.ts, input.pt and expected.pt."""
    rt.load_library()  # for torch.jit.load here (conftest imported kiln before torch)
    out = tmp_path_factory.mktemp(f"cpp_deploy_{request.param}")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(PY_DIR), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, str(EXAMPLE / "make_model.py"), str(out), "--device", request.param]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return request.param, out


def test_app_links_the_runtime(kiln_infer):
    """The app calls no Kiln symbol, yet libkiln_runtime.so must be a NEEDED library of it
    (Kiln::runtime links it with --no-as-needed), or torch::jit::load cannot find kiln.Engine."""
    if not shutil.which("readelf"):
        pytest.skip("readelf not installed")
    dynamic = subprocess.run(["readelf", "-d", str(kiln_infer)], capture_output=True, text=True)
    assert "[libkiln_runtime.so]" in dynamic.stdout, dynamic.stdout


def test_cpp_output_equals_python(kiln_infer, saved, tmp_path):
    device, out = saved
    x = torch.load(out / "input.pt")
    proc = _infer(kiln_infer, out / "model.ts", out / "input.pt", tmp_path / "output.pt", device)
    assert proc.returncode == 0, proc.stderr
    cpp = torch.load(tmp_path / "output.pt")

    module = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        python = module(x.to(device)).cpu()
    assert cpp.dtype == python.dtype == torch.float32
    assert cpp.shape == python.shape == (x.shape[0], 10)
    # The same engine on the same backend and inputs: bit-identical results.
    assert torch.equal(cpp, python)
    assert torch.equal(cpp, torch.load(out / "expected.pt"))


def test_cpp_other_batch_and_tuple_input(kiln_infer, saved, tmp_path):
    """Another batch size of the dynamic profile, given as a one-element tuple of inputs."""
    device, out = saved
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    torch.save((x,), tmp_path / "input.pt")
    proc = _infer(kiln_infer, out / "model.ts", tmp_path / "input.pt", tmp_path / "out.pt", device)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        python = torch.jit.load(str(out / "model.ts"))(x.to(device)).cpu()
    assert torch.equal(torch.load(tmp_path / "out.pt"), python)


def test_cpp_errors(kiln_infer, saved, tmp_path):
    """Failures exit non-zero with a message: missing model, input outside the profile."""
    device, out = saved
    proc = _infer(kiln_infer, tmp_path / "missing.ts", out / "input.pt", tmp_path / "o.pt", device)
    assert proc.returncode != 0
    assert "kiln_infer:" in proc.stderr and "missing.ts" in proc.stderr

    torch.save(torch.randn(17, 3, 16, 16), tmp_path / "big.pt")  # the profile's batch is 1..16
    proc = _infer(kiln_infer, out / "model.ts", tmp_path / "big.pt", tmp_path / "o.pt", device)
    assert proc.returncode != 0
    assert "kiln_infer:" in proc.stderr and "'x'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.pt").exists()

    proc = subprocess.run([str(kiln_infer)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
