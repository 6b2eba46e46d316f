import subprocess
import sys


def test_demo_runs_and_matches():
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "demo", "--batch", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")
    assert "\ncpu " in out.stdout  # the row of the CPU reference backend


def test_info_lists_ops():
    out = subprocess.run(
        [sys.executable, "-m", "kiln", "info"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "matmul" in out.stdout
