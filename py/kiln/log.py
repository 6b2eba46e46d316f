"""Kiln's logger: one severity level and one sink, shared by the C++ engine and Python code.

The default sink writes warnings and errors to stderr as "[kiln] WARNING: ...". Pass
``set_log_sink(logging_sink)`` to route messages into Python's ``logging`` module instead.
"""

import logging
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
