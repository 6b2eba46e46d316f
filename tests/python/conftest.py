import os

# Builds in tests use the kernels' heuristic choices: timing every tactic of every GEMM and
# convolution would make the GPU suite several times slower. Tests of tactic selection ask for it
# explicitly (BuilderConfig(tactic_timing=True)).
os.environ.setdefault("KILN_TACTIC_TIMING", "0")
# Every build in a test builds: the engine cache (on by default in kiln.compile) would turn a test's
# "fresh compile" into a cache hit. Tests of the cache pass cache_dir explicitly.
os.environ.setdefault("KILN_ENGINE_CACHE", "0")

import pytest  # noqa: E402

import kiln  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if kiln.cuda_available():
        return
    if os.environ.get("KILN_REQUIRE_GPU") == "1":
        raise pytest.UsageError("KILN_REQUIRE_GPU=1 but no CUDA GPU is visible to Kiln")
    skip = pytest.mark.skip(reason="no CUDA GPU visible (GPU test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"kiln {kiln.__version__}; CUDA GPUs visible to Kiln: {kiln._C.cuda_device_count()}"
