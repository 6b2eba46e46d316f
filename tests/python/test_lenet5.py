"""LeNet-5 from a PyTorch state_dict file, built with the native API in Python and in C++
(examples/lenet5), matches PyTorch at rtol/atol 1e-4 in FP32: reference backend here, CUDA on the
GPU machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from layer_util import DEVICES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "lenet5"))

import lenet5  # noqa: E402
import lenet5_torch  # noqa: E402

BUILD = Path(os.environ.get("KILN_BUILD_DIR", ROOT / "build"))
PROGRAM = BUILD / "examples" / "kiln_lenet5"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet5")
    lenet5_torch.write(out)
    return out


def check_python(data_dir, target):
    got, want = lenet5.run(data_dir, target)
    assert got.shape == (4, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def check_cpp(data_dir, target):
    assert PROGRAM.exists(), f"{PROGRAM} is missing: build Kiln first (tools/build.sh)"
    run = subprocess.run([str(PROGRAM), str(data_dir), target], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"lenet5 c++ {target}: max abs err" in run.stdout and "OK" in run.stdout


# CUDA too is compared with the PyTorch outputs computed on the CPU in FP32.
@pytest.mark.parametrize("target", DEVICES)
def test_python(data_dir, target):
    check_python(data_dir, target)


# "reference": the C++ example's word for the CPU reference backend
@pytest.mark.parametrize("target", ["reference", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cpp(data_dir, target):
    check_cpp(data_dir, target)


def test_cpp_reports_missing_weights(tmp_path):
    run = subprocess.run([str(PROGRAM), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "cannot open weights file" in run.stderr
