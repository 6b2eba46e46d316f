"""A compile, save and load round trip prints nothing at the default log level: no warning that
torch prints because of how Kiln calls it (kiln.log.TORCH_NOISE), in a fresh process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compile_save_load_round_trip_prints_nothing(tmp_path):
    script = textwrap.dedent(
        f"""
        import torch, kiln

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3)
                self.fc = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

        x = torch.randn(2, 3, 8, 8)
        for ir in ("export", "torchscript"):
            model = M().eval() if ir == "export" else torch.jit.script(M().eval())
            compiled = kiln.compile(model, [x], ir=ir, device="cpu")
            for fmt, name in (("exported_program", "m.pt2"), ("torchscript", "m.ts")):
                if ir == "torchscript" and fmt == "exported_program":
                    continue
                path = {str(tmp_path)!r} + "/" + ir + "_" + name
                kiln.save(compiled, path, output_format=fmt)
                torch.testing.assert_close(kiln.load(path)(x), compiled(x))
        """
    )
    env = dict(os.environ)  # Python's default warning filters, Kiln's default log level
    for name in ("PYTHONWARNINGS", "KILN_LOG_LEVEL"):
        env.pop(name, None)
    path = tmp_path / "round_trip.py"  # a file: torch.jit.script reads the class's source
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "", done.stdout + done.stderr


def test_progress_bars_show_the_long_steps_when_asked(tmp_path):
    """KILN_PROGRESS=1 (or a terminal) shows tqdm bars for export, lowering, building engines, the
    builder's stages and saving; without a terminal nothing is shown (the test above)."""
    import pytest

    pytest.importorskip("tqdm")
    script = tmp_path / "progress.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import torch, kiln
            lin = torch.nn.Linear
            layers = [lin(8, 8), torch.nn.ReLU(), lin(8, 8), torch.nn.GELU(), lin(8, 2)]
            model = torch.nn.Sequential(*layers).eval()
            compiled = kiln.compile(model, [torch.randn(2, 8)], device="cpu")
            assert compiled.report.num_engines == 1
            kiln.save(compiled, {str(tmp_path / "m.pt2")!r})
            """
        )
    )
    env = dict(os.environ, KILN_PROGRESS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    for step in (
        "kiln: exporting",
        "kiln: lowering",
        "kiln: building engines",
        "kiln: builder stages",
        "kiln: saving m.pt2",
    ):
        assert step in done.stderr, done.stderr
