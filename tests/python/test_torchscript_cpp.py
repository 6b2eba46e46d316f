"""The TorchScript frontend's C++ API: examples/cpp_compile (a LibTorch program linking
Kiln::torchscript from find_package(Kiln)) compiles a scripted model from C++ and saves it; the
result loads in Python and matches what kiln.compile(ir="torchscript") gives for the same model
(the same engines on the reference backend: bit-identical outputs). Built like test_cpp_deploy.py
builds examples/cpp, under the machine-wide build lock.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kiln
import kiln.runtime as rt

pytestmark = [
    pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tools"))
from cpp_example import build_example  # noqa: E402 (tools/cpp_example.py)
from test_compile import SmallCNN  # noqa: E402


@pytest.fixture(scope="module")
def compiler() -> Path:
    """examples/cpp_compile built against this Kiln: the path of its kiln_compile_ts."""
    return build_example("cpp_compile") / "kiln_compile_ts"


def test_cpp_compile_matches_python(compiler, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(tmp_path / "in.ts"))
    cmd = [str(compiler), str(tmp_path / "in.ts"), str(tmp_path / "out.ts")]
    cmd += ["1x3x16x16", "4x3x16x16", "8x3x16x16", "cpu", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "1 engine segment" in proc.stdout

    rt.load_library()  # for torch.jit.load here (conftest imported kiln before torch)
    from_cpp = torch.jit.load(str(tmp_path / "out.ts"))
    spec = kiln.Input(min_shape=(1, 3, 16, 16), opt_shape=(4, 3, 16, 16), max_shape=(8, 3, 16, 16))
    from_python = kiln.compile(scripted, [spec], device="cpu", min_block_size=1)
    with torch.no_grad():
        for batch in (1, 5, 8):
            x = torch.randn(batch, 3, 16, 16)
            assert torch.equal(from_cpp(x), from_python(x))
            torch.testing.assert_close(from_cpp(x), model(x), rtol=1e-4, atol=1e-4)


def test_cpp_compile_errors(compiler, tmp_path):
    torch.jit.save(torch.jit.script(SmallCNN().eval()), str(tmp_path / "in.ts"))
    cmd = [str(compiler), str(tmp_path / "in.ts"), str(tmp_path / "out.ts")]
    proc = subprocess.run(
        cmd + ["8x3x16x16", "4x3x16x16", "1x3x16x16"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "min <= opt <= max" in proc.stderr
    assert not (tmp_path / "out.ts").exists()
