"""Runs every node test of the onnx package's backend test suite through Kiln's ONNX backend.

    python3 tools/onnx_node_tests.py                      # reference backend (CPU)
    python3 tools/onnx_node_tests.py --device cuda        # the GPU engine
    python3 tools/onnx_node_tests.py --write              # also update docs/onnx.md's results and
                                                          # tests/python/onnx_node_expected.txt
    python3 tools/onnx_node_tests.py -k conv              # only tests whose name contains "conv"

Each test is onnx's own (onnx.backend.test.BackendTest: its models, inputs, reference outputs and
tolerances), run in this process with unittest. The denominator is every node test the installed
onnx defines for the device: nothing is left out. Failures are grouped by reason (the operator
the parser lacks, a dtype, an old opset, a wrong result, ...).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import unittest
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
EXPECTED = ROOT / "tests" / "python" / "onnx_node_expected.txt"
DOC = ROOT / "docs" / "onnx.md"


def node_test_class(device: str):
    import onnx.backend.test

    import kiln.onnx

    bt = onnx.backend.test.BackendTest(kiln.onnx.KilnBackend, "kiln_onnx_node_tests")
    cls = bt.test_cases["OnnxBackendNodeModelTest"]
    suffix = "_" + device.lower()
    names = sorted(n for n in dir(cls) if n.startswith("test_") and n.endswith(suffix))
    return cls, names


def reason_of(err: str) -> str:
    """A short failure group for an exception text."""
    m = re.search(r"\((\w+), domain '([^']*)', opset \d+\) is not supported", err)
    if m:
        return f"operator not supported: {m.group(1)}" + (
            "" if m.group(2) == "ai.onnx" else f" ({m.group(2)})"
        )
    m = re.search(r"opset is (\d+), older than", err)
    if m:
        return "opset older than 13"
    m = re.search(r"element type (\w+), which Kiln cannot hold", err)
    if m:
        return f"element type {m.group(1)}"
    if "is not a tensor (sequence, map or optional)" in err:
        return "sequence/map/optional inputs"
    if "Not equal to tolerance" in err or "Mismatched elements" in err:
        return "wrong result (beyond the test's tolerance)"
    if "incorrect shape" in err:
        return "wrong output shape"
    m = re.search(r"ONNX node '[^']*' \((\w+), domain[^:]*: (.*)", err)
    if m:
        return f"{m.group(1)}: {m.group(2).splitlines()[0][:120]}"
    first = err.strip().splitlines()[-1] if err.strip() else "unknown"
    return first[:160]


def run(device: str, only: str | None) -> dict[str, tuple[str, str]]:
    cls, names = node_test_class(device)
    if only:
        names = [n for n in names if only in n]
    results: dict[str, tuple[str, str]] = {}
    for name in names:
        result = unittest.TestResult()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(name).run(result)
        if result.errors or result.failures:
            err = (result.errors or result.failures)[0][1]
            results[name] = ("fail", reason_of(err))
        elif result.skipped:
            results[name] = ("skip", result.skipped[0][1])
        elif result.expectedFailures:
            results[name] = ("fail", "expected failure")
        else:
            results[name] = ("pass", "")
    return results


def operator_table(results: dict[str, tuple[str, str]], device: str) -> str:
    """Every operator of the default domain (the installed onnx's schemas): imported or not, and
    the node tests whose graphs use it (passing / all)."""
    import onnx
    from onnx.backend.test.loader import load_model_tests

    import kiln.onnx

    supported = set(kiln.onnx.supported_operators())
    uses: dict[str, list[str]] = collections.defaultdict(list)
    for case in load_model_tests(kind="node"):
        for op in {n.op_type for n in case.model.graph.node if n.domain in ("", "ai.onnx")}:
            uses[op].append(f"{case.name}_{device}")
    ops = sorted(
        {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
    )
    lines = ["| operator | Kiln | node tests passing |", "|---|---|---:|"]
    for op in ops:
        tests = uses.get(op, [])
        ok = sum(1 for t in tests if results.get(t, ("fail", ""))[0] == "pass")
        status = "imported" if op in supported else "not supported"
        lines.append(f"| {op} | {status} | {ok} / {len(tests)} |")
    return "\n".join(lines)


def summary_markdown(results: dict[str, tuple[str, str]], device: str, onnx_version: str) -> str:
    total = len(results)
    passed = sum(1 for s, _ in results.values() if s == "pass")
    groups = collections.Counter(r for s, r in results.values() if s != "pass")
    lines = [
        f"Device `{device}`, onnx {onnx_version}: **{passed} of {total} node tests pass "
        f"({100.0 * passed / max(total, 1):.1f}%)**. Failures by reason:",
        "",
        "| reason | tests |",
        "|---|---:|",
    ]
    for reason, n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {reason.replace('|', '/')} | {n} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("-k", dest="only", default=None, help="only tests whose name contains this")
    ap.add_argument(
        "--write", action="store_true", help="update docs/onnx.md and the expected list"
    )
    ap.add_argument("--json", default=None, help="write every test's status and reason here")
    args = ap.parse_args()
    import onnx

    t0 = time.time()
    results = run(args.device, args.only)
    md = summary_markdown(results, args.device, onnx.__version__)
    print(md)
    print(f"\n({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.write:
        if args.only:
            print("--write needs the full run (no -k)", file=sys.stderr)
            return 2
        suffix = "_" + args.device
        passing = sorted(n[: -len(suffix)] for n, (s, _) in results.items() if s == "pass")
        if args.device == "cpu":
            EXPECTED.write_text(
                "# onnx node tests that pass on Kiln's reference backend (tools/onnx_node_tests.py "
                "--write);\n# tests/python/test_onnx_node_tests.py fails when one of them stops "
                "passing or another starts.\n" + "\n".join(passing) + "\n"
            )
        sections = {f"node-tests-{args.device}": md}
        if args.device == "cpu":
            sections["operators"] = operator_table(results, "cpu")
        doc = DOC.read_text()
        for key, body in sections.items():
            begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
            if begin not in doc:
                print(f"docs/onnx.md has no {begin} section; not written", file=sys.stderr)
                continue
            head, rest = doc.split(begin, 1)
            _, tail = rest.split(end, 1)
            doc = head + begin + "\n" + body + "\n" + end + tail
        DOC.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
