"""Engine and ExecutionContext: running a built plan from Python.

``ExecutionContext.execute(feed)`` takes a dict of inputs and returns a dict of outputs:
- torch CUDA tensors on a CUDA engine: zero-copy; outputs are allocated through torch's caching
  allocator and the work is enqueued on torch's current stream (no synchronization);
- numpy arrays (or CPU torch tensors) on either device: copied in, run, copied out; outputs come
  back as numpy arrays (torch tensors if torch tensors went in).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from kiln import _C
from kiln._C import KilnError
from kiln.dtypes import (
    DTYPES,
    as_numpy,
    backend_name,
    deprecated,
    device_name,
    device_of_backend,
    renamed,
    torch_dtype,
)


def weight_buffers(weights: Mapping[str, object]) -> tuple[list, list, list, list]:
    """Names, Kiln dtype names, dims and raw bytes of refit weights (arrays or tensors)."""
    names, dtypes, dims, data = [], [], [], []
    for name, value in weights.items():
        arr, dtype = as_numpy(value)
        names.append(name)
        dtypes.append(dtype)
        dims.append(list(arr.shape))
        data.append(arr.reshape(-1).view("uint8"))
    return names, dtypes, dims, data


def _plan_refit(plan: _C.Plan, weights: Mapping[str, object]) -> None:
    """kiln.Plan.refit(weights): sets the plan's weight-derived constants from new values of its
    refittable weights (every one, by name); a plan saved with strip_weights=True gets them back
    and can then run. See docs/refit.md."""
    plan._refit(*weight_buffers(weights))


_C.Plan.refit = _plan_refit


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


class Engine:
    """A plan ready to run.

    device: "cuda" (the default when the plan was built for a GPU and one is visible; the
    current CUDA device) or "cpu" (the CPU reference backend). ``backend=`` ("reference" for
    "cpu") is its deprecated name.

    A plan built by another Kiln major.minor version (or, for the GPU, against other CUDA,
    cuBLASLt or cuDNN major.minor versions) is refused; ``allow_minor_version_mismatch=True``
    accepts one of another minor version of the same major (docs/reliability.md).

    trusted: whether the GPU code a CUDA plan carries (the cubins of its fused pointwise kernels)
    may run as stored. Plans are your build artifacts, so by default (None: this thread's
    setting) they are trusted, unless the environment sets KILN_TRUST_PLAN_KERNELS=0.
    ``trusted=False`` compiles those kernels again from their programs with NVRTC, so only code
    Kiln generated itself runs: pass it for a plan someone else wrote (docs/security.md).
    """

    def __init__(
        self,
        plan: _C.Plan | bytes,
        device: str | None = None,
        *,
        backend: str | None = None,
        allow_minor_version_mismatch: bool = False,
        trusted: bool | None = None,
    ):
        if isinstance(plan, bytes | bytearray | memoryview):
            plan = _C.Plan.deserialize(plan)
        elif not isinstance(plan, _C.Plan):
            raise TypeError(
                f"kiln.Engine takes a kiln.Plan or plan bytes, got {type(plan).__name__} "
                "(kiln.Plan.load(path) reads a plan file)"
            )
        if backend is not None:
            backend = device_of_backend(backend)
        device = renamed("kiln.Engine", "backend", "device", backend, device)
        if device is None:
            device = "cuda" if plan.header["sm_arch"] and _C.cuda_device_count() > 0 else "cpu"
        device = device_name(device, allow_index=False)
        self._engine = _C.Engine(plan, backend_name(device), allow_minor_version_mismatch, trusted)
        self.plan = plan

    input_names = property(lambda self: self._engine.input_names)
    output_names = property(lambda self: self._engine.output_names)
    num_profiles = property(lambda self: self._engine.num_profiles)

    def device_type(self) -> str:
        """Where the engine runs: "cuda" or "cpu" (the same method as torch.classes.kiln.Engine)."""
        return device_of_backend(self._engine.backend)

    def device_index(self) -> int:
        """The CUDA device the engine runs on; -1 on the CPU."""
        return self._engine.device if self.device_type() == "cuda" else -1

    @property
    def backend(self) -> str:
        """Deprecated: the device in the old words ("cuda", "reference")."""
        deprecated("kiln.Engine.backend", "kiln.Engine.device_type()")
        return self._engine.backend

    def binding(self, name: str) -> tuple[str, list[int]]:
        """(dtype, dims with -1 for dynamic) of an input or output."""
        return self._engine.binding(name)

    def describe(self) -> list[str]:
        """One line per layer: its name, op, kernel and output shapes."""
        return self._engine.describe_layers()

    def describe_layers(self) -> list[str]:
        """Deprecated: describe()."""
        deprecated("kiln.Engine.describe_layers()", "kiln.Engine.describe()")
        return self.describe()

    @property
    def device_bytes(self) -> int:
        """Bytes of constants this engine holds on the GPU (0 on the CPU)."""
        return self._engine.device_bytes

    def refittable_weights(self) -> dict[str, tuple[str, list[int]]]:
        """{weight name: (dtype, dims)} of the weights refit sets (docs/refit.md)."""
        return {
            name: (dtype, list(dims)) for name, dtype, dims in self._engine.refittable_weights()
        }

    def refit(self, weights: Mapping[str, object]) -> None:
        """New values for every refittable weight, by name (numpy arrays or torch tensors of the
        engine's dtypes and shapes), without a rebuild: the constants the builder derived from them
        are recomputed the way it computed them and written in place. Not while a context of this
        engine runs. Missing, unknown and reshaped weights are refused by name."""
        self._engine.refit(*weight_buffers(weights))
        self.plan = self._engine.plan

    def create_execution_context(self, memory: str = "shapes_in_use") -> ExecutionContext:
        """A new context (one per thread or stream). memory: "shapes_in_use" (default) lays out
        and allocates the activation arena for the input shapes of each call, growing it when
        larger shapes come; "profile_max" allocates it at once for the profiles' largest shapes,
        so that no call allocates."""
        return ExecutionContext(self, self._engine.create_execution_context(memory))


class ExecutionContext:
    """Per-stream execution state of an Engine. Use one context per thread/stream: a context
    that another thread is using refuses the call with a KilnError (it is never corrupted)."""

    def __init__(self, engine: Engine, ctx):
        self.engine = engine
        self._ctx = ctx
        self._busy = threading.Lock()  # held by execute(): its calls must not interleave

    def set_optimization_profile(self, index: int) -> None:
        self._ctx.set_optimization_profile(index)

    @property
    def cuda_graphs(self) -> bool:
        """CUDA graph capture and replay per input shapes (CUDA contexts; default on unless
        KILN_CUDA_GRAPHS=0). Setting it has no effect on the CPU."""
        return self._ctx.cuda_graphs

    @cuda_graphs.setter
    def cuda_graphs(self, enabled: bool) -> None:
        self._ctx.cuda_graphs = bool(enabled)

    def set_binding_staging(self, enabled: bool) -> None:
        """Graph replays read/write context-owned copies of the bindings (see core/engine.h)."""
        self._ctx.set_binding_staging(bool(enabled))

    @property
    def graph_stats(self) -> dict[str, int]:
        """Counters: captures, instantiations, updates, replays, plain (layer-by-layer) runs."""
        return dict(self._ctx.graph_stats)

    def set_input_shape(self, name: str, shape) -> None:
        self._ctx.set_input_shape(name, list(shape))

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._ctx.tensor_shape(name))

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self._ctx.set_tensor_address(name, ptr)

    def enqueue(self, stream: int = 0) -> None:
        """Launch on `stream` (a cudaStream_t as int) without synchronizing."""
        self._ctx.enqueue(stream)

    def set_profiling(self, on: bool) -> None:
        """Profiling mode: every enqueue times each layer (CUDA events around each launch on the
        CUDA device, a host clock on the CPU); see layer_times()."""
        self._ctx.set_profiling(bool(on))

    def layer_times(self) -> list[float]:
        """Milliseconds per layer of the last profiled enqueue (waits for it on CUDA)."""
        return self._ctx.layer_times()

    def layer_costs(self) -> list[tuple[float, float]]:
        """(FLOPs, bytes moved) of every layer at the current input shapes: the roofline's cost
        model (kiln.roofline)."""
        return self._ctx.layer_costs()

    @property
    def device_bytes(self) -> int:
        """Bytes this context holds on the GPU: activation arena + workspace + staging."""
        return self._ctx.device_bytes

    @property
    def arena_bytes(self) -> int:
        """Bytes of activation arena allocated now (on the engine's device, or host memory)."""
        return self._ctx.arena_bytes

    def execute(self, feed: Mapping[str, object]) -> dict[str, object]:
        """Runs the engine on `feed` (input name -> array or tensor); see the module docstring."""
        if not self._busy.acquire(blocking=False):
            raise KilnError(
                "ExecutionContext.execute: another thread is using this execution context right "
                "now; a context serves one thread at a time: create one per thread "
                "(engine.create_execution_context())"
            )
        try:
            return self._execute(feed)
        finally:
            self._busy.release()

    def _check_output_dtypes(self) -> None:
        """A clear error for an output dtype this API cannot hand back (float8: numpy has none,
        and the engine I/O here moves Kiln's DTYPES only). Checked once per context."""
        if getattr(self, "_outputs_checked", False):
            return
        for name in self.engine.output_names:
            dtype = self.engine.binding(name)[0]
            if dtype not in DTYPES:
                raise KilnError(
                    f"output {name!r} is {dtype}, which the Python engine API does not return "
                    f"(it moves {', '.join(DTYPES)}); end the network with a dequantize of it "
                    "(format e4m3, scale 1 gives its values) or read it inside the network"
                )
        self._outputs_checked = True

    def _execute(self, feed: Mapping[str, object]) -> dict[str, object]:
        self._check_output_dtypes()
        values = list(feed.values())
        if (
            self.engine.device_type() == "cuda"
            and values
            and all(_is_torch(v) and v.is_cuda for v in values)
        ):
            return self._execute_torch_cuda(feed)
        arrays = {}
        for name, value in feed.items():
            want = self.engine.binding(name)[0] if name in self.engine.input_names else None
            try:
                arr, dtype = as_numpy(value)
            except TypeError as e:
                raise TypeError(f"input {name!r}: {e}; the engine expects {want}") from None
            if want is not None and dtype != want:
                raise TypeError(f"input {name!r} is {dtype}, the engine expects {want}")
            arrays[name] = arr
        out = self._ctx.execute_host(arrays)
        # bfloat16 outputs come back as their int16 bit patterns
        bf16 = {k for k in out if self.engine.binding(k)[0] == "bfloat16"}
        if any(_is_torch(v) for v in values):
            import torch

            return {
                k: torch.from_numpy(v).view(torch.bfloat16) if k in bf16 else torch.from_numpy(v)
                for k, v in out.items()
            }
        if bf16:
            import ml_dtypes  # numpy's bfloat16 (a dependency of onnx and jax)

            out = {k: v.view(ml_dtypes.bfloat16) if k in bf16 else v for k, v in out.items()}
        return out

    def _execute_torch_cuda(self, feed: Mapping[str, object]) -> dict[str, object]:
        import torch

        missing = set(self.engine.input_names) - set(feed)
        if missing:
            raise ValueError(f"missing inputs: {sorted(missing)}")
        device = None
        keep = []  # contiguous copies must outlive the enqueue
        for name, t in feed.items():
            if name not in self.engine.input_names:
                raise ValueError(
                    f"{name!r} is not an input of this engine (inputs: {self.engine.input_names})"
                )
            want = self.engine.binding(name)[0]
            if t.dtype != torch_dtype(want):
                raise TypeError(f"input {name!r} is {t.dtype}, the engine expects torch.{want}")
            device = t.device
            t = t.contiguous()
            keep.append(t)
            self._ctx.set_input_shape(name, list(t.shape))
            self._ctx.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.engine.output_names:
            dtype = torch_dtype(self.engine.binding(name)[0])
            out = torch.empty(self.tensor_shape(name), dtype=dtype, device=device)
            self._ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        with torch.cuda.device(device):
            self._ctx.enqueue(torch.cuda.current_stream(device).cuda_stream)
        return outputs
