"""Kiln's logger: one severity level and one sink, shared by the C++ engine and Python code.

The default sink writes warnings and errors to stderr as "[kiln] WARNING: ...". Pass
``set_log_sink(logging_sink)`` to route messages into Python's ``logging`` module instead.
"""

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable

from kiln import _C

LEVELS = ("error", "warning", "info", "verbose")
_PY_LEVELS = {
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "VERBOSE": logging.DEBUG,
}


def set_log_level(level: str) -> None:
    """Show messages at `level` and more severe: "error", "warning" (default), "info", "verbose"."""
    _C.set_log_level(level)


def log_level() -> str:
    return _C.log_level().lower()


def set_log_sink(sink: Callable[[str, str], None] | None) -> None:
    """Send messages that pass the level to `sink(severity, message)`; None restores stderr."""
    _C.set_log_sink(sink)


def logging_sink(severity: str, message: str) -> None:
    """A sink that forwards to the standard `logging` module, logger "kiln"."""
    logging.getLogger("kiln").log(_PY_LEVELS.get(severity, logging.INFO), message)


def log(level: str, message: str) -> None:
    """Log from Python code through the same logger as the engine."""
    _C.log(level, message)


# Warnings torch prints because of how Kiln calls it, each filtered by its exact message around
# the Kiln calls that trigger it (nothing else is hidden):
TORCH_NOISE = (
    # torch.export's own deep copies of pytree specs (every export-path compile, torch 2.11)
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # torch.export.load reading a .pt2 archive's tensors (torch's pt2_archive)
    (UserWarning, r"The given buffer is not writable"),
    # torch.jit.script of torch.fx.GraphModule (its __init__ annotates an empty container)
    (UserWarning, r"The TorchScript type system doesn't support instance-level annotations"),
)


@contextlib.contextmanager
def torch_noise_filtered():
    """Hides exactly the TORCH_NOISE warnings inside the block."""
    with warnings.catch_warnings():
        for category, message in TORCH_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def quiet_torch(fn):
    """Decorator: `fn` runs inside torch_noise_filtered()."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch_noise_filtered():
            return fn(*args, **kwargs)

    return wrapper
