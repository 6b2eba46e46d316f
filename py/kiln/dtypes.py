"""Dtype names shared by the engine, numpy and torch."""

import numpy as np

NAMES = ("float32", "float16", "bfloat16", "int32", "int64", "bool", "int8")


def dtype_name(dtype) -> str:
    """Kiln's name for a dtype given as a name, a numpy dtype or a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(NAMES)}")
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        name = text[len("torch.") :]
        if name in NAMES:
            return name
        raise TypeError(f"{text} is not supported by Kiln engines; use one of {', '.join(NAMES)}")
    name = np.dtype(dtype).name
    if name not in NAMES:
        raise TypeError(
            f"numpy dtype {name} is not supported by Kiln engines; use one of {', '.join(NAMES)}"
        )
    return name


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def as_numpy(value) -> tuple[np.ndarray, str]:
    """A C-contiguous numpy view of an array-like or torch tensor, and its Kiln dtype name.

    bfloat16 torch tensors come back as their raw 16-bit patterns (numpy has no bfloat16).
    """
    if type(value).__module__.startswith("torch"):
        t = value.detach().cpu().contiguous()
        name = dtype_name(t.dtype)
        if name == "bfloat16":
            import torch

            return t.view(torch.int16).numpy(), name
        return t.numpy(), name
    arr = np.ascontiguousarray(value)
    return arr, dtype_name(arr.dtype)
