"""Stage 3 of kiln.compile's export frontend: a torch.fx.GraphModule calling the engines.

The driver's segments come back in execution order: PyTorch segments are copied node by node
from the exported graph, each engine segment becomes one EngineModule (a
torch.classes.kiln.Engine made from the driver's Plan in memory: kiln._torch.make_engine) called
with the segment's inputs. float64 values cross engine boundaries as float32.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch.utils import _pytree as pytree

from kiln.fx_lowering import NARROWED, FxLowering


def _narrow(graph: torch.fx.Graph, node: torch.fx.Node, fx_node: torch.fx.Node) -> torch.fx.Node:
    """A float64 value handed to an engine, as the float32 the engine was built for."""
    dtype = getattr(fx_node.meta.get("val"), "dtype", None)
    if dtype not in NARROWED:
        return node
    return graph.call_method("to", (node, NARROWED[dtype]))


def _widen(graph: torch.fx.Graph, out: torch.fx.Node, fx_node: torch.fx.Node) -> torch.fx.Node:
    """An engine output back in the dtype PyTorch code expects (float32 -> float64)."""
    dtype = getattr(fx_node.meta.get("val"), "dtype", None)
    if dtype not in NARROWED:
        return out
    return graph.call_method("to", (out, dtype))


def assemble(
    lowered: FxLowering, segments: list[dict], plans: list, device: torch.device, cuda_graphs: bool
) -> torch.fx.GraphModule:
    """The compiled graph: `segments` from the driver in order, `plans` one per engine segment."""
    from kiln import runtime

    engine_plans = iter(plans)
    root = torch.nn.Module()
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in lowered.user_inputs:
        env[node] = graph.placeholder(node.name)
    placeholders = {n.name: n for n in lowered.fx.nodes if n.op == "placeholder"}
    param_sources: dict[str, str] = {}  # buffer -> placeholder (kiln.refit updates them)

    def lookup(a: torch.fx.Node) -> torch.fx.Node:
        if a not in env and a.name in lowered.params:  # a weight PyTorch code reads
            attr = f"_kiln_param_{len(root._buffers)}"
            param_sources[attr] = a.name
            root.register_buffer(attr, lowered.params[a.name].detach())
            env[placeholders[a.name]] = graph.get_attr(attr)
        return env[a]

    engines = 0
    for segment in segments:
        if not segment["engine"]:
            for index in segment["nodes"]:
                node = lowered.fx_nodes[index]
                env[node] = graph.node_copy(node, lookup)
                for user in node.users:
                    if user.target is operator.getitem:
                        env[user] = graph.node_copy(user, lookup)
            continue
        name = f"_kiln_engine_{engines}"
        engines += 1
        engine = runtime.engine_from_plan(next(engine_plans), device, cuda_graphs=cuda_graphs)
        root.add_module(name, runtime.EngineModule(engine))
        call = graph.call_module(
            name,
            tuple(
                _narrow(graph, env[lowered.fx_of_value[v]], lowered.fx_of_value[v])
                for v in segment["inputs"]
            ),
        )
        outputs = segment["outputs"]
        for j, v in enumerate(outputs):
            fx_node = lowered.fx_of_value[v]
            out = call if len(outputs) == 1 else graph.call_function(operator.getitem, (call, j))
            env[fx_node] = _widen(graph, out, fx_node)

    output = next(n for n in lowered.fx.nodes if n.op == "output")
    flat = [
        lookup(a) if isinstance(a, torch.fx.Node) else a for a in pytree.tree_leaves(output.args[0])
    ]
    graph.output(tuple(flat))
    module = torch.fx.GraphModule(root, graph, "KilnCompiledGraph")
    module._kiln_param_sources = param_sources
    return module
