import subprocess
import sys


def test_demo_compiles_checks_saves_and_reloads_a_torchvision_model():
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "demo", "--model", "resnet18", "--size", "64"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.strip().endswith("OK")
    assert "1 engine segment, 0 PyTorch segments" in text  # the compile report
    assert "output vs eager PyTorch (FP32): cosine" in text
    assert text.count("cosine 1.0000") >= 2  # both formats reloaded in a fresh process
    assert "exported_program" in text and "torchscript" in text


def test_info_lists_ops():
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "info"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "matmul" in out.stdout
    for word in ("torch ", "CUDA runtime built against", "cuDNN built against", "GPUs visible",
                 "runtime library", "ONNX parser"):  # fmt: skip
        assert word in out.stdout, out.stdout
