"""kiln.Input: the shape (static, or a min/opt/max range per dim) and dtype of one model input."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Input:
    """One model input for :func:`kiln.compile`.

    ``Input(shape=(8, 3, 224, 224))`` is static; ``Input(min_shape=..., opt_shape=...,
    max_shape=...)`` makes every dim whose min and max differ dynamic: the engines accept any size
    in [min, max] and are tuned for opt. A plain tensor passed to compile stands for
    ``Input(shape=t.shape, dtype=t.dtype)``.
    """

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        min_shape: Sequence[int] | None = None,
        opt_shape: Sequence[int] | None = None,
        max_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        name: str | None = None,
    ):
        if shape is not None:
            if min_shape is not None or opt_shape is not None or max_shape is not None:
                raise ValueError("kiln.Input: give either shape or min_shape/opt_shape/max_shape")
            min_shape = opt_shape = max_shape = shape
        if min_shape is None or max_shape is None:
            raise ValueError("kiln.Input needs shape=, or min_shape= and max_shape= (opt_shape=)")
        if opt_shape is None:
            opt_shape = max_shape
        self.dtype = dtype
        self.name = name
        self.min_shape = tuple(int(d) for d in min_shape)
        self.opt_shape = tuple(int(d) for d in opt_shape)
        self.max_shape = tuple(int(d) for d in max_shape)
        if not len(self.min_shape) == len(self.opt_shape) == len(self.max_shape):
            raise ValueError(f"kiln.Input: min/opt/max shapes differ in rank: {self}")
        for lo, opt, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True):
            if not 0 <= lo <= opt <= hi:
                raise ValueError(f"kiln.Input: each dim needs 0 <= min <= opt <= max: {self}")

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Input:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"kiln.compile inputs are tensors or kiln.Input, got a {type(t).__name__}; a model "
                "that takes lists or dicts of tensors (torchvision detection models take a list of "
                "images) compiles through torch.compile(model, backend='kiln')"
            )
        return cls(shape=tuple(t.shape), dtype=t.dtype)

    @property
    def dynamic_dims(self) -> list[int]:
        """Indices of the dims whose min and max differ."""
        return [
            i
            for i, (lo, hi) in enumerate(zip(self.min_shape, self.max_shape, strict=True))
            if lo != hi
        ]

    def example(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A random tensor for tracing. Dynamic dims take opt, or max when opt is 0 or 1 (export
        would specialize a traced 0/1 dim)."""
        shape = [
            (opt if opt > 1 else hi) if lo != hi else opt
            for lo, opt, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True)
        ]
        if self.dtype.is_floating_point:
            return torch.randn(shape, dtype=self.dtype, device=device)
        if self.dtype == torch.bool:
            return torch.rand(shape, device=device) > 0.5
        return torch.randint(0, 8, shape, dtype=self.dtype, device=device)

    def __repr__(self) -> str:
        if self.min_shape == self.max_shape:
            return f"kiln.Input(shape={self.opt_shape}, dtype={self.dtype})"
        return (
            f"kiln.Input(min_shape={self.min_shape}, opt_shape={self.opt_shape}, "
            f"max_shape={self.max_shape}, dtype={self.dtype})"
        )
