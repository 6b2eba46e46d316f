"""Torch ops inside engines, chosen automatically (kiln.compile's ``torch_ops_in_engine="auto"``,
docs/plugins.md).

An op Kiln has no converter for would be a graph break: the engine before it and the engine after
it become two engines with PyTorch in between. Where the op can run as a layer of the engine
instead (a ``torch_op`` layer that libkiln_runtime calls through the dispatcher on views of the
engine's buffers), the model stays one engine and one CUDA graph. This module says which ops of a
graph may: the driver then keeps a node of one inside its engine only where it joins engine nodes
on both sides (partitioning/partition.h, ``joining_ops``); elsewhere it runs in PyTorch as before.

An op qualifies when running it that way cannot change its meaning or break a CUDA graph:
functional (mutates and aliases nothing: a view's result is copied into the engine's buffer, and
``as_strided`` reads the storage layout, which engines do not keep), tensors out only, output
shapes that follow from the input shapes (no ``dynamic_output_shape``/``data_dependent_output``
tag), no randomness (``nondeterministic_seeded``: a replayed graph would repeat its numbers), not
tagged ``cudagraph_unsafe``, with a kernel for the compile's device and a meta (fake) kernel for
shapes.
"""

from __future__ import annotations

import torch
import torch.fx

from kiln import _C

_UNSAFE_TAGS = (
    torch.Tag.cudagraph_unsafe,
    torch.Tag.dynamic_output_shape,
    torch.Tag.data_dependent_output,
    torch.Tag.nondeterministic_seeded,
    torch.Tag.inplace_view,
)

_COMPOSITE = ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")


def _has_kernel(op: torch._ops.OpOverload, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key)


def why_not(op, device: torch.device) -> str | None:
    """None when ``op`` (an OpOverload) may run inside an engine on ``device`` automatically, else
    the reason it may not."""
    if not isinstance(op, torch._ops.OpOverload):
        return "not an op overload"
    if op.namespace in ("kiln", "higher_order"):
        return "a Kiln op"
    schema = op._schema
    if schema.is_mutable:
        return "it mutates an input"
    if any(a.alias_info is not None for a in schema.arguments) or any(
        r.alias_info is not None for r in schema.returns
    ):
        return "its result aliases an input (a view)"
    if not schema.returns or not all(isinstance(r.type, torch.TensorType) for r in schema.returns):
        return "it returns something other than tensors"
    tags = set(op.tags)
    for tag in _UNSAFE_TAGS:
        if tag in tags:
            return f"it is tagged {tag.name}"
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not any(_has_kernel(op, k) for k in (key, *_COMPOSITE)):
        return f"it has no {key} kernel"
    if not any(_has_kernel(op, k) for k in ("Meta", *_COMPOSITE)):
        return "it has no meta (fake) kernel for its output shapes"
    return None


def automatic(ops, device: torch.device) -> list[str]:
    """Of ``ops`` (OpOverloads, as a graph uses them), the overload names ("aten.fmod.Tensor")
    that no converter handles and that may run inside engines automatically, sorted; loads
    libkiln_runtime (where the torch_op layer is defined) when there are any."""
    from kiln import runtime
    from kiln.options import overload_name

    if not runtime.is_available():
        return []
    names = set()
    for op in ops:
        if not isinstance(op, torch._ops.OpOverload):
            continue
        name = overload_name(op)
        if name not in names and not _C.has_converter(name) and why_not(op, device) is None:
            names.add(name)
    if names:
        runtime.load_library()
    return sorted(names)


def fx_ops(graph: torch.fx.Graph) -> list:
    """The op overloads an FX graph calls."""
    return [n.target for n in graph.nodes if n.op == "call_function"]


def script_ops(module: torch.jit.ScriptModule) -> list:
    """The op overloads a ScriptModule's (inlined) forward calls, from each node's schema."""
    ops = []
    for node in module.inlined_graph.nodes():
        if "::" not in node.kind() or node.kind().startswith(("prim::", "kiln::")):
            continue
        try:
            schema = torch._C.parse_schema(node.schema())
        except RuntimeError:  # "(no schema)"
            continue
        namespace, name = schema.name.split("::", 1)
        try:
            packet = getattr(getattr(torch.ops, namespace), name)
            ops.append(getattr(packet, schema.overload_name or "default"))
        except AttributeError:
            continue
    return ops
