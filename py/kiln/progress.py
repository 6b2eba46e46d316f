"""Progress bars for Kiln's long steps, shown on stderr when it is a terminal and silent
otherwise (a log, a pipe, CI): export, lowering, building each engine, tactic timing,
calibration, saving. tqdm draws them (pip install tqdm; without it nothing is shown).
KILN_PROGRESS=0 turns them off, KILN_PROGRESS=1 on even without a terminal.

The engine reports its own steps (ir/progress.h) to ``_C.set_progress_sink``; ``progress_bars()``
installs a sink for a block, and ``step()`` / ``iterate()`` mark Python-level steps.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator

from kiln import _C

_local = threading.local()


def enabled() -> bool:
    """Whether bars are shown: KILN_PROGRESS, else whether stderr is a terminal; tqdm needed."""
    setting = os.environ.get("KILN_PROGRESS")
    if setting == "0":
        return False
    if setting != "1" and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class _Bars:
    """The engine's tasks, one tqdm bar each while it runs."""

    def __init__(self):
        self.bars = {}
        self.lock = threading.Lock()

    def __call__(self, task: str, done: int, total: int) -> None:
        from tqdm import tqdm

        with self.lock:
            bar = self.bars.get(task)
            if bar is None or (done == 0 and bar.n > 0):
                if bar is not None:
                    bar.close()
                bar = self.bars[task] = tqdm(total=total, desc=f"kiln: {task}", leave=False)
            bar.total = total
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()
                del self.bars[task]

    def close(self) -> None:
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()


@contextlib.contextmanager
def progress_bars():
    """Shows the engine's progress inside the block (nested blocks share the outer one's bars)."""
    if getattr(_local, "active", False) or not enabled():
        yield
        return
    bars = _Bars()
    _local.active = True
    _C.set_progress_sink(bars)
    try:
        yield
    finally:
        _C.set_progress_sink(None)
        bars.close()
        _local.active = False


@contextlib.contextmanager
def step(description: str):
    """One Python-level step (a bar of one unit, done when the block ends)."""
    if not enabled():
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=1, desc=f"kiln: {description}", leave=False)
    try:
        yield
        bar.update(1)
    finally:
        bar.close()


def iterate(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """`items` with a bar when shown (calibration batches)."""
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=f"kiln: {description}", total=total, leave=False)
