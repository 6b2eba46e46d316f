"""Plugins and converters from users (docs/plugins.md).

- ``kiln.load_plugin_library(path)``: a shared library of C++/CUDA plugin layers
  (``core/plugin.h``); its plugins become ops that ``Network.add_plugin`` adds and that saved
  plans and modules need at load (KILN_PLUGIN_LIBRARIES lists libraries any app loads by itself).
- ``@kiln.converter("mylib::myop.default")``: a converter written with the network API, for an
  op overload of either frontend's graphs; it takes precedence over a built-in one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kiln import _C


def load_plugin_library(path: str | os.PathLike) -> None:
    """Loads a plugin library; the plugins it registers can then be added to networks and the
    plans and modules that use them load. Loading one file twice does nothing more."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise _C.KilnError(f"kiln.load_plugin_library: {path} does not exist")
    _C.load_plugin_library(path)


def registered_plugins() -> list[str]:
    """ "namespace::name version" of every plugin registered in this process."""
    return list(_C.registered_plugins())


@dataclass(frozen=True)
class ValueInfo:
    """A tensor argument as a converter's capability check sees it (no network exists yet)."""

    dtype: str
    shape: tuple[int, ...]  # -1: a dynamic dim


@dataclass(frozen=True)
class Node:
    """The graph node a converter converts: its name (layers are named after it), its target
    (``"mylib.myop.default"``) and its arguments by schema name (tensors as kiln.Tensor in a
    converter, as ValueInfo in a capability check)."""

    name: str
    target: str
    args: dict


def _decode(value, make):
    if isinstance(value, dict):
        ((kind, v),) = value.items()
        return make(kind, v)
    if isinstance(value, list):
        return [_decode(e, make) for e in value]
    return value


def _dispatch(fn, c_net, name: str, target: str, args: list, used: Sequence[bool]) -> list[int]:
    """Runs converter `fn` for one node (called by the C++ driver) and returns the tensor id of
    each node output (-1 where nobody uses it)."""
    from kiln.network import Network, Tensor

    net = Network.__new__(Network)
    net._net = c_net
    node = Node(name, target, {k: _decode(v, lambda _, i: Tensor(net, i)) for k, v in args})
    try:
        result = fn(net, node)
        return _output_ids(result, target, used, c_net)
    finally:
        # The C++ network lives only for this call: a network or tensor kept by the converter
        # fails clearly afterwards instead of reaching freed memory.
        net._net = _Released()


class _Released:
    def __getattr__(self, name):
        raise _C.KilnError(
            "this kiln.Network was lent to a converter call that has ended; converters must not "
            "keep the network or its tensors"
        )


def _output_ids(result, target: str, used: Sequence[bool], c_net) -> list[int]:
    from kiln.network import Layer, Tensor

    outputs = list(result) if isinstance(result, list | tuple) else [result]
    if len(outputs) != len(used):
        raise TypeError(
            f"the converter of {target} returned {len(outputs)} output(s); the node has {len(used)}"
        )
    ids = []
    for k, (out, needed) in enumerate(zip(outputs, used, strict=True)):
        if isinstance(out, Layer):
            out = out.output
        if out is None and not needed:
            ids.append(-1)
            continue
        if not isinstance(out, Tensor) or out._network._net is not c_net:
            raise TypeError(
                f"the converter of {target} returned {out!r} for output {k}: return tensors of the "
                "network it was given"
            )
        ids.append(out.id)
    return ids


def _check(capability, name: str, target: str, args: list) -> str:
    node = Node(
        name, target, {k: _decode(v, lambda _, i: ValueInfo(i[0], tuple(i[1]))) for k, v in args}
    )
    reason = capability(node)
    if reason is None or reason is True or reason == "":
        return ""
    return "its converter says: " + ("no" if reason is False else str(reason))


_registered: dict[str, list[Callable]] = {}


def converter(
    target,
    *,
    capability: Callable[[Node], str | bool | None] | None = None,
    dynamic_shapes: bool = True,
    limits: str = "",
):
    """Registers a converter for op overload `target` (``torch.ops.mylib.myop.default`` or its
    name ``"mylib.myop.default"`` / ``"mylib::myop.default"``), used by both frontends and taking
    precedence over a built-in converter of the same op::

        @kiln.converter("kiln_example::erfinv.default")
        def erfinv(net: kiln.Network, node: kiln.plugins.Node):
            return net.add_plugin("erfinv", [node.args["x"]], {"scale": node.args["scale"]},
                                  namespace="kiln_example")

    The function gets the engine segment's kiln.Network and the node, adds layers, and returns
    the node's output tensors (a Tensor, a single-output Layer, or a list: None for an output
    nobody uses). capability(node) -> "" / None / True when the node converts, else the reason
    (False or a string) it runs in PyTorch instead; dynamic_shapes=False sends nodes with dynamic
    dims to PyTorch. ``kiln.plugins.remove_converter(target)`` brings back what it replaced.
    """
    from kiln.options import overload_name  # imports torch: not at `import kiln`

    name = overload_name(target)

    def register(fn):
        _C.register_python_converter(
            name,
            fn,
            capability,
            dynamic_shapes,
            limits or f"Python converter {fn.__qualname__}",
            _dispatch,
            _check,
        )
        _registered.setdefault(name, []).append(fn)
        return fn

    return register


def registered_converters() -> dict[str, Callable]:
    """{op overload name: the Python converter in effect for it} (kiln.converter)."""
    return {name: fns[-1] for name, fns in sorted(_registered.items()) if fns}


def remove_converter(target) -> None:
    """Removes the last converter registered for `target` with kiln.converter (the one it
    replaced, built-in or not, converts again)."""
    from kiln.options import overload_name  # imports torch: not at `import kiln`

    name = overload_name(target)
    if not _registered.get(name):
        raise _C.KilnError(f"kiln.plugins.remove_converter: no converter was registered for {name}")
    _C.remove_python_converter(name)
    _registered[name].pop()
