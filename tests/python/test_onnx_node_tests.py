"""onnx's own backend node tests through Kiln's ONNX backend (tools/onnx_node_tests.py).

Every node test the installed onnx defines runs (on the reference backend; on CUDA with a GPU).
tests/python/onnx_node_expected.txt lists the ones that pass on the reference backend: a test
that stops passing fails here, and so does one that starts passing without the list being
updated (tools/onnx_node_tests.py --write), so the pass rate docs/onnx.md publishes stays true.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import kiln

pytest.importorskip("onnx", reason="the onnx package is needed (pip install onnx)")
if not hasattr(kiln._C, "onnx_parse_file"):
    pytest.skip("this Kiln was built without its ONNX parser", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import onnx_node_tests  # noqa: E402


def expected_passing() -> set[str]:
    lines = onnx_node_tests.EXPECTED.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def published(device: str) -> tuple[int, int]:
    text = onnx_node_tests.DOC.read_text()
    section = text.split(f"<!-- node-tests-{device}:begin -->")[1].split(
        f"<!-- node-tests-{device}:end -->"
    )[0]
    m = re.search(r"\*\*(\d+) of (\d+) node tests pass", section)
    return int(m.group(1)), int(m.group(2))


def test_every_node_test_on_the_reference_backend_matches_the_expected_list():
    results = onnx_node_tests.run("cpu", None)
    passing = {name[: -len("_cpu")] for name, (status, _) in results.items() if status == "pass"}
    want = expected_passing()
    stopped = sorted(want - passing)
    started = sorted(passing - want)
    assert not stopped, (
        f"node tests that stopped passing: {stopped[:20]} ({len(stopped)}): "
        + "; ".join(f"{n}: {results[n + '_cpu'][1]}" for n in stopped[:5])
    )
    assert not started, (
        f"node tests that now pass ({len(started)}, e.g. {started[:10]}): run "
        "`python3 tools/onnx_node_tests.py --write` to update the list and docs/onnx.md"
    )
    # docs/onnx.md publishes this run's numbers, over every node test.
    assert published("cpu") == (len(passing), len(results))


@pytest.mark.gpu
def test_node_tests_on_cuda_pass_at_least_the_published_rate():
    results = onnx_node_tests.run("cuda", None)
    passed = sum(1 for status, _ in results.values() if status == "pass")
    want, total = published("cuda")
    assert len(results) == total
    failing = sorted(
        n
        for n, (s, _) in results.items()
        if s != "pass" and n[: -len("_cuda")] in expected_passing()
    )
    assert passed >= want, (
        f"{passed} of {total} pass on CUDA, docs/onnx.md says {want}; e.g. {failing[:10]}"
    )
