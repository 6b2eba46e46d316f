"""CompileReport: what kiln.compile did with a graph (both frontends; kept by kiln.save)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Fallback:
    """A node that runs in PyTorch, and why."""

    node: str
    target: str
    reason: str


@dataclass
class CompileReport:
    """What compile did (or, with dry_run, would do) with the graph."""

    num_engines: int
    segments: list[dict] = field(default_factory=list)  # kind, nodes (names), ops
    fallbacks: list[Fallback] = field(default_factory=list)
    text: str = ""
    # Nodes that run in PyTorch only to check the branches on tensor values the engines follow
    # (kiln/export.py's speculation): none of the model's results passes through them.
    checks: list[Fallback] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        """Plain data (JSON): num_engines, segments, fallbacks (node, target, reason), text."""
        return {
            "num_engines": self.num_engines,
            "segments": [dict(s) for s in self.segments],
            "fallbacks": [
                {"node": f.node, "target": f.target, "reason": f.reason} for f in self.fallbacks
            ],
            "text": self.text,
            "checks": [
                {"node": f.node, "target": f.target, "reason": f.reason} for f in self.checks
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CompileReport:
        """The report of to_dict's data (kiln.load reads it from a saved module)."""
        return cls(
            num_engines=int(data["num_engines"]),
            segments=[dict(s) for s in data.get("segments", [])],
            fallbacks=[
                Fallback(f["node"], f["target"], f["reason"]) for f in data.get("fallbacks", [])
            ],
            text=data.get("text", ""),
            checks=[Fallback(f["node"], f["target"], f["reason"]) for f in data.get("checks", [])],
        )

    @classmethod
    def from_driver(cls, report) -> CompileReport:
        """The report of the C++ compile driver (kiln._C.CompileReport), either frontend."""
        return cls(
            num_engines=report.num_engines,
            segments=[
                {"kind": s.kind, "nodes": list(s.nodes), "ops": list(s.ops)}
                for s in report.segments
            ],
            fallbacks=[Fallback(f.node, f.target, f.reason) for f in report.fallbacks],
            text=report.text,
        )


def set_apart_checks(report: CompileReport, graph, branches: list[str]) -> None:
    """Moves the fallbacks that only check speculated branches (nodes of `graph`, the exported
    program's, from which no model output is reached) from report.fallbacks to report.checks."""
    output = next(n for n in graph.nodes if n.op == "output")
    live, stack = set(), [output]
    while stack:
        node = stack.pop()
        if node.name not in live:
            live.add(node.name)
            stack.extend(node.all_input_nodes)
    checks = [f for f in report.fallbacks if f.node not in live]
    if not checks:
        return
    report.fallbacks = [f for f in report.fallbacks if f.node in live]
    report.checks = [Fallback(f.node, f.target, "checks a speculated branch") for f in checks]
    report.text += (
        f"\nspeculated branches on tensor values: {len(checks)} of the nodes in PyTorch only "
        f"check them after the engines (a device-to-host copy each call): " + "; ".join(branches)
    )
