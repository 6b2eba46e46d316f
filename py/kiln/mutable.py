"""kiln.MutableModule: a model that stays compiled while its weights change (docs/refit.md).

    model = MyModel()
    fast = kiln.MutableModule(model, [example_input], enabled_precisions={torch.float16})
    for step in range(steps):
        train_step(model)                   # trains eagerly (fast.train() runs the model as it is)
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                y = fast(x)                 # compiled once, then refitted to the current weights
            model.train()

It behaves like the model: a call in training mode, or with an input that requires grad, runs
the model itself (autograd needs PyTorch); an evaluation call runs Kiln engines, compiled on the
first call for the inputs' shapes (or the kiln.Input ranges given), refitted when the weights
changed since (a version counter, a replaced tensor), and compiled again when the shapes leave
the compiled ranges, the input dtypes change, a weight changed its shape or dtype, or the call
runs under another torch.autocast state (a float16/bfloat16 autocast region compiles into
engines whose layers compute in that dtype, as the casts autocast makes become part of the
graph). ``stats`` counts builds and refits.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch

from kiln import _C
from kiln.log import log


class _Autocasting(torch.nn.Module):
    """The model with the autocast state of the call entered inside forward, so that torch.export
    turns autocast's casts into ops of the graph."""

    def __init__(self, model: torch.nn.Module, autocast: dict):
        super().__init__()
        self.model = model
        self.autocast = autocast

        # torch.export matches inputs to forward's named parameters: the model's.
        def forward(*args, **kwargs):
            return self._forward(*args, **kwargs)

        forward.__signature__ = inspect.signature(model.forward)
        self.forward = forward

    def _forward(self, *args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device, dtype in self.autocast.items():
                stack.enter_context(torch.autocast(device, dtype=dtype))
            return self.model(*args, **kwargs)


def _autocast_state() -> dict:
    return {
        device: torch.get_autocast_dtype(device)
        for device in ("cpu", "cuda")
        if torch.is_autocast_enabled(device)
    }


def _weights_key(model: torch.nn.Module) -> dict:
    return {
        name: (t, t._version, t.data_ptr())
        for name, t in model.state_dict(keep_vars=True).items()
        if isinstance(t, torch.Tensor)
    }


class _Entry:
    """One compiled module: for an autocast state and input dtypes, over a shape range."""

    def __init__(self, compiled, specs, weights, prefix=""):
        self.compiled = compiled
        self.specs = specs
        self.weights = weights
        self.prefix = prefix  # of the model's parameter names in the compiled module

    def fits(self, tensors) -> bool:
        return _covers(self.specs, tensors)


def _covers(specs, tensors) -> bool:
    """Whether the kiln.Input ranges `specs` cover the tensors' shapes (one spec per tensor)."""
    if len(specs) != len(tensors):
        return False
    for spec, t in zip(specs, tensors, strict=True):
        if len(spec.min_shape) != t.dim():
            return False
        for lo, hi, size in zip(spec.min_shape, spec.max_shape, t.shape, strict=True):
            if not lo <= size <= hi:
                return False
    return True


class MutableModule(torch.nn.Module):
    """See the module docstring. ``inputs``: one kiln.Input or example tensor per positional
    input (None: the first evaluation call's tensors, static shapes); ``compile_options``: as
    kiln.compile (enabled_precisions, min_block_size, device, ...)."""

    def __init__(self, model: torch.nn.Module, inputs: Sequence | None = None, **compile_options):
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"kiln.MutableModule takes a torch.nn.Module, got {type(model).__name__}"
            )
        self.model = model
        self.inputs = list(inputs) if inputs is not None else None
        self.compile_options = dict(compile_options)
        self.stats = {"builds": 0, "refits": 0}
        self._entries: dict = {}  # (autocast, dtypes, kwarg names) -> [_Entry]

    def forward(self, *args, **kwargs):
        tensors = list(args) + list(kwargs.values())
        if self.model.training or any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
        ):
            return self.model(*args, **kwargs)
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            raise _C.KilnError(
                "kiln.MutableModule: every input must be a tensor (the engines take tensors)"
            )
        autocast = _autocast_state()
        key = (
            tuple(sorted(autocast.items())),
            tuple((t.dtype, t.device.type) for t in tensors),
            tuple(kwargs),
        )
        entries = self._entries.setdefault(key, [])
        entry = next((e for e in entries if e.fits(tensors)), None)
        if entry is None:
            entry = self._compile(args, kwargs, autocast)
            entries.append(entry)
        else:
            self._refresh(entry, args, kwargs, autocast, entries)
            entry = next(e for e in entries if e.fits(tensors))
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return entry.compiled(*args, **kwargs)

    def _refresh(self, entry: _Entry, args, kwargs, autocast, entries) -> None:
        """Refits `entry` when the model's weights changed since it was built or refitted; a
        weight of another shape or dtype compiles it again."""
        from kiln.refitting import refit

        current = _weights_key(self.model)
        if current.keys() == entry.weights.keys() and all(
            a is b[0] and va == b[1] and pa == b[2]
            for (a, va, pa), b in zip(current.values(), entry.weights.values(), strict=True)
        ):
            return
        state = {entry.prefix + k: v for k, v in self.model.state_dict().items()}
        try:
            refit(entry.compiled, state)
        except (_C.KilnError, TypeError) as error:
            log("info", f"kiln.MutableModule: compiling again instead of refitting: {error}")
            entries.remove(entry)
            entries.append(self._compile(args, kwargs, autocast))
            return
        entry.weights = current
        self.stats["refits"] += 1

    def _compile(self, args, kwargs, autocast) -> _Entry:
        from kiln.compiler import compile as kiln_compile
        from kiln.inputs import Input

        specs = self.inputs if self.inputs is not None and self._fit_given(args) else list(args)
        specs = [s if isinstance(s, Input) else Input.from_tensor(s) for s in specs]
        options = dict(self.compile_options)
        precisions = set(options.pop("enabled_precisions", {torch.float32}))
        precisions |= set(autocast.values())  # an autocast region's dtype is a precision too
        module = _Autocasting(self.model, autocast) if autocast else self.model
        with torch.no_grad():
            compiled = kiln_compile(
                module,
                specs,
                enabled_precisions=precisions,
                kwarg_inputs=dict(kwargs) or None,
                **options,
            )
        self.stats["builds"] += 1
        kw_specs = [Input.from_tensor(t) for t in kwargs.values()]
        prefix = "model." if autocast else ""
        return _Entry(compiled, specs + kw_specs, _weights_key(self.model), prefix)

    def _fit_given(self, args) -> bool:
        """Whether the inputs given at construction cover these arguments' shapes."""
        from kiln.inputs import Input

        specs = [s if isinstance(s, Input) else Input.from_tensor(s) for s in self.inputs]
        return _covers(specs, list(args))
