"""Kiln's one table of names: dtypes, precisions and devices.

Every Python API and the CLI translate what users write through these functions, so one
spelling means one thing everywhere (STYLE.md point 11). The module imports no torch: the
engine API (kiln.Network, kiln.Engine) runs without it, and torch dtypes are recognised by
their text ("torch.float16").

- dtypes: Kiln's names ("float32", ...), numpy dtypes and torch dtypes -> the Kiln name;
  ``torch_dtype(name)`` back.
- precisions: what an engine may compute in besides FP32: "fp32", "tf32", "fp16", "bf16", also
  written as torch dtypes or "float32" / "float16" / "half" / "bfloat16".
- devices: where engines run: "cuda" (or "cuda:N"), "cpu" (the CPU reference backend), "auto"
  where an API picks; torch.device objects too. "reference" is the old word for "cpu".
"""

from __future__ import annotations

import warnings

import numpy as np

# ---- dtypes ---------------------------------------------------------------------------------

# Kiln name -> numpy name (numpy has no bfloat16: its tensors cross as raw 16-bit patterns).
# The torch dtype of each is torch.<name>.
DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": None,
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
    "int8": "int8",
}
NAMES = tuple(DTYPES)


def find_dtype_name(dtype) -> str | None:
    """Kiln's name for a dtype given as a Kiln name, a numpy dtype or a torch dtype; None when
    Kiln has no such dtype (float64, complex, ...). Raises ValueError for an unknown name."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(NAMES)}")
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        name = text[len("torch.") :]
        return name if name in DTYPES else None
    try:
        name = np.dtype(dtype).name
    except TypeError:
        return None
    return name if name in DTYPES else None


def dtype_name(dtype) -> str:
    """Kiln's name for a dtype given as a name, a numpy dtype or a torch dtype.

    Raises ValueError for an unknown name, TypeError for a dtype Kiln engines do not support."""
    name = find_dtype_name(dtype)
    if name is None:
        text = str(dtype) if str(dtype).startswith("torch.") else f"numpy dtype {dtype}"
        raise TypeError(f"{text} is not supported by Kiln engines; use one of {', '.join(NAMES)}")
    return name


def torch_dtype(name: str):
    """The torch dtype of a Kiln dtype name."""
    import torch

    return getattr(torch, dtype_name(name))


def as_numpy(value) -> tuple[np.ndarray, str]:
    """A C-contiguous numpy view of an array-like or torch tensor, and its Kiln dtype name.

    bfloat16 torch tensors come back as their raw 16-bit patterns (numpy has no bfloat16).
    """
    if type(value).__module__.startswith("torch"):
        t = value.detach().cpu().contiguous()
        name = dtype_name(t.dtype)
        if DTYPES[name] is None:
            import torch

            return t.view(torch.int16).numpy(), name
        return t.numpy(), name
    arr = np.asarray(value, order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
    if arr.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: its bit patterns, as torch's above
        return arr.view(np.int16), "bfloat16"
    return arr, dtype_name(arr.dtype)


# ---- precisions -----------------------------------------------------------------------------

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


def precision_name(precision) -> str:
    """The canonical name ("fp32", "tf32", "fp16", "bf16") of a precision given as one of those,
    a torch dtype (torch.float32 / float16 / bfloat16) or "float32" / "float16" / "half" /
    "bfloat16". Raises ValueError listing the accepted spellings.

    The spellings are the C++ table's (core/builder.cpp enable_precision, via kiln._C), so the
    Python API, the CLI and the C++ API accept the same words."""
    from kiln import _C

    text = _text(precision)
    if text is not None:
        text = text.removeprefix("torch.")  # torch.float16 -> "float16"
        try:
            return _C.precision_name(text)
        except _C.KilnError:
            pass
    raise ValueError(
        f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}, "
        "torch.float32 / torch.float16 / torch.bfloat16 / torch.float8_e4m3fn, or 'float32', "
        "'float16', 'half', 'bfloat16', 'float8_e4m3fn'"
    )


# The dtype a model runs in at each precision (tf32 computes float32 values on tensor cores).
# fp8: FP8 GEMMs inside a float16 model (kiln.compile's FP8 calibration).
PRECISION_DTYPES = {
    "fp32": "float32",
    "tf32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8": "float16",
}


def precision_dtype(precision) -> str:
    """The Kiln dtype name of a precision's values ("fp16" -> "float16")."""
    return PRECISION_DTYPES[precision_name(precision)]


def precision_names(precisions) -> list[str]:
    """Canonical names of a collection of precisions, in order, without repeats."""
    if isinstance(precisions, str) or not hasattr(precisions, "__iter__"):
        precisions = [precisions]  # enabled_precisions="fp16" or =torch.float16
    return list(dict.fromkeys(precision_name(p) for p in precisions))


def _text(value) -> str | None:
    """A string as it is, a torch dtype or torch.device as its text, anything else None."""
    if isinstance(value, str):
        return value
    return str(value) if type(value).__module__ == "torch" else None


# ---- devices --------------------------------------------------------------------------------

DEVICES = ("cuda", "cpu")


def device_name(
    device, *, allow_auto: bool = False, allow_index: bool = True, stacklevel: int = 2
) -> str:
    """Where engines run: "cpu", "cuda" or "cuda:N" (and "auto" where ``allow_auto``), from one
    of those or a torch.device. The old word "reference" means "cpu" (a DeprecationWarning,
    attributed ``stacklevel`` frames above the caller, as warnings.warn counts).

    allow_index=False refuses "cuda:N" (APIs that run on the current CUDA device)."""
    text = _text(device)
    if text is None:
        raise TypeError(f"device must be a string or a torch.device, got {type(device).__name__}")
    if text == "reference":
        warnings.warn(
            "device 'reference' is deprecated: the CPU reference backend is device 'cpu'",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return "cpu"
    if text in DEVICES or (allow_auto and text == "auto"):
        return text
    kind, sep, index = text.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        if not allow_index:
            raise ValueError(
                f"device {text!r}: this API runs on the current CUDA device; pass 'cuda' and "
                f"select the GPU first (torch.cuda.set_device({index}))"
            )
        return f"cuda:{int(index)}"
    if kind == "cpu" and sep and index == "0":
        return "cpu"
    choices = "'cuda', 'cuda:N', 'cpu'" if allow_index else "'cuda', 'cpu'"
    if allow_auto:
        choices = "'auto', " + choices
    raise ValueError(f"unknown device {text!r}; use {choices}")


def backend_name(device: str) -> str:
    """The engine core's word for a device type: "cuda" or "reference" (the C++ bindings and
    torch.classes.kiln.Engine take it)."""
    return {"cuda": "cuda", "cpu": "reference", "auto": "auto"}[device.partition(":")[0]]


def device_of_backend(backend: str) -> str:
    """The device word for the engine core's backend name ("reference" -> "cpu")."""
    return "cpu" if backend == "reference" else backend


# ---- old spellings --------------------------------------------------------------------------


def renamed(where: str, old: str, new: str, old_value, new_value, *, stacklevel: int = 2):
    """The value of a renamed keyword argument: ``new_value``, or ``old_value`` with a
    DeprecationWarning when the caller used the old name (kept for one release)."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{where}: pass {new}= only ({old}= is its deprecated name)")
    warnings.warn(
        f"{where}: {old}= is deprecated; use {new}=",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
    return old_value


def deprecated(what: str, instead: str, *, stacklevel: int = 2) -> None:
    """A DeprecationWarning for an old name kept for one release."""
    warnings.warn(
        f"{what} is deprecated; use {instead}", DeprecationWarning, stacklevel=stacklevel + 1
    )
