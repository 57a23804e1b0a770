"""A pipeline graph: nodes, port-to-port edges, conditions; validation and a topological plan.

References to ports are strings ``"node.port"``; the pipeline's own inputs are ``"input.NAME"``.
``validate`` collects every problem at once and raises one :class:`GraphError` whose lines each
name the node and the port.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .node import Node, types_match

INPUT = "input"


class GraphError(ValueError):
    """The graph is not runnable; ``problems`` lists each reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid pipeline:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class PortRef:
    node: str
    port: str

    @classmethod
    def parse(cls, ref: str) -> PortRef:
        node, sep, port = ref.partition(".")
        if not sep or not node or not port:
            raise GraphError([f"bad port reference {ref!r}: expected 'node.port'"])
        return cls(node, port)

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


class Graph:
    """Nodes plus edges ``source port -> (node, input port)``.

    ``inputs`` declares the pipeline's inputs (name -> type); ``outputs`` names the ports whose
    values make the result (result key -> ``"node.port"``); ``when[node]`` is a port whose value
    must be truthy (Python's ``bool``) for the node to run on an item.
    """

    def __init__(self, inputs: dict[str, str] | None = None) -> None:
        self.inputs: dict[str, str] = dict(inputs or {})
        self.nodes: dict[str, Node] = {}
        self.bindings: dict[tuple[str, str], PortRef] = {}  # (node, input port) -> source
        self.when: dict[str, PortRef] = {}
        self.outputs: dict[str, PortRef] = {}

    # -- building -------------------------------------------------------------------------------
    def add(self, node: Node, *, when: str | None = None, **inputs: str) -> Node:
        """Add ``node``; keyword arguments bind its input ports to ``"node.port"`` sources."""
        if node.name in self.nodes or node.name == INPUT:
            raise GraphError([f"node {node.name!r}: name already used"])
        self.nodes[node.name] = node
        for port, source in inputs.items():
            self.connect(source, f"{node.name}.{port}")
        if when is not None:
            self.when[node.name] = PortRef.parse(when)
        return node

    def connect(self, source: str, target: str) -> None:
        """Bind input port ``target`` ("node.port") to output ``source`` ("node.port")."""
        dst = PortRef.parse(target)
        key = (dst.node, dst.port)
        if key in self.bindings:
            raise GraphError([f"node {dst.node!r}: input {dst.port!r} is bound twice"])
        self.bindings[key] = PortRef.parse(source)

    def output(self, name: str, source: str) -> None:
        self.outputs[name] = PortRef.parse(source)

    # -- checking -------------------------------------------------------------------------------
    def _port_type(self, ref: PortRef) -> str | None:
        if ref.node == INPUT:
            return self.inputs.get(ref.port)
        node = self.nodes.get(ref.node)
        return None if node is None else node.outputs.get(ref.port)

    def _check_source(self, ref: PortRef, where: str) -> list[str]:
        if ref.node != INPUT and ref.node not in self.nodes:
            return [f"{where}: unknown node {ref.node!r} in {str(ref)!r}"]
        if self._port_type(ref) is None:
            owner = "pipeline inputs" if ref.node == INPUT else f"node {ref.node!r}"
            return [f"{where}: {owner} has no output {ref.port!r}"]
        return []

    def dependency_graph(self) -> nx.DiGraph:
        """Node-level graph: an edge u -> v when v reads an output of u (bindings and conditions)."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        sources = [(node, ref) for (node, _), ref in self.bindings.items()]
        sources += [(node, ref) for node, ref in self.when.items()]
        for node, ref in sources:
            if ref.node in self.nodes and node in self.nodes:
                g.add_edge(ref.node, node)
        return g

    def validate(self) -> None:
        """Raise :class:`GraphError` listing every problem: unknown nodes or ports, type
        mismatches, unbound required inputs, cycles."""
        problems: list[str] = []
        for (name, port), ref in self.bindings.items():
            where = f"node {name!r} input {port!r}"
            node = self.nodes.get(name)
            if node is None:
                problems.append(f"{where}: no such node")
                continue
            if port not in node.inputs:
                problems.append(f"{where}: {type(node).__name__} has no such input "
                                f"(inputs: {', '.join(node.inputs) or 'none'})")
                continue
            found = self._check_source(ref, where)
            problems += found
            if not found and not types_match(self._port_type(ref), node.inputs[port]):
                problems.append(f"{where}: type {node.inputs[port]!r} cannot take {str(ref)!r} "
                                f"of type {self._port_type(ref)!r}")
        for name, node in self.nodes.items():
            for port in node.inputs:
                if port not in node.optional and (name, port) not in self.bindings:
                    problems.append(f"node {name!r} input {port!r}: required input is not bound")
        for name, ref in self.when.items():
            problems += self._check_source(ref, f"node {name!r} condition 'when'")
        for key, ref in self.outputs.items():
            problems += self._check_source(ref, f"pipeline output {key!r}")
        deps = self.dependency_graph()
        if not nx.is_directed_acyclic_graph(deps):
            cycle = nx.find_cycle(deps)
            problems.append("cycle: " + " -> ".join([u for u, _ in cycle] + [cycle[0][0]]))
        if problems:
            raise GraphError(problems)

    def plan(self) -> list[str]:
        """Node names in a topological order (ties broken by insertion order)."""
        self.validate()
        order = {name: i for i, name in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(self.dependency_graph(), key=order.get))

    # -- drawing --------------------------------------------------------------------------------
    def to_mermaid(self) -> str:
        """The DAG as a mermaid flowchart (edges labelled with ports, conditions dashed)."""
        lines = ["flowchart TD", f"  {INPUT}([input: {', '.join(self.inputs)}])"]
        lines += [f"  {name}[{name}<br/>{type(node).__name__}]" for name, node in self.nodes.items()]
        for (name, port), ref in self.bindings.items():
            label = port if ref.port == port else f"{ref.port}→{port}"
            lines.append(f"  {ref.node} -->|{label}| {name}")
        for name, ref in self.when.items():
            lines.append(f"  {ref.node} -.->|when {ref.port}| {name}")
        lines.append(f"  output([output: {', '.join(self.outputs)}])")
        for key, ref in self.outputs.items():
            lines.append(f"  {ref.node} -->|{ref.port}| output")
        return "\n".join(lines)
