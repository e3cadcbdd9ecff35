"""Where a tensor sits in an ONNX graph: the container's tensor keys (FORMAT.md, "Graph blob").

A key is a path of node indices, `init:NAME` for an initializer and `nodeI:OUTPUT` for the value of
Constant node I, each subgraph adding `nodeI.ATTR/` (`nodeI.ATTR[K]/` in a graph list), so the same
walk over a stripped copy of a model finds the same tensors. The adapter that writes containers and
the exports that rewrite their stored graphs both walk here, so the two cannot disagree on a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from qpack.formats.errors import FormatError

DEFAULT_DOMAINS = ("", "ai.onnx")  # the domain of ONNX's own ops, spelt either way
_KEY = re.compile(r"((?:node\d+\.[^/]+/)*)(init|node\d+):(.*)", re.S)


@dataclass(frozen=True)
class Site:
    """A stored tensor and where it sits: its key, its graph's key prefix and graph, and the Constant
    node holding it (None: an initializer)."""

    key: str
    scope: str  # "" for the main graph
    graph: GraphProto
    tensor: TensorProto
    node: NodeProto | None

    @property
    def value(self) -> str:
        """The name consumers read it by."""
        return self.node.output[0] if self.node is not None else self.tensor.name


def subgraphs(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    """(attribute name, graph) of every graph a node holds (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", g


def walk_graphs(graph: GraphProto, scope: str = "") -> Iterator[tuple[str, GraphProto]]:
    """(scope, graph) for the graph and every subgraph, the scope being the prefix of its keys."""
    yield scope, graph
    for i, node in enumerate(graph.node):
        for name, sub in subgraphs(node):
            yield from walk_graphs(sub, f"{scope}node{i}.{name}/")


def walk_sites(graph: GraphProto, scope: str = "") -> Iterator[Site]:
    """Every initializer and Constant value, subgraphs included, in file order: a graph's
    initializers, then its nodes, each Constant's value and then each node's subgraphs.

    Keys are not checked for uniqueness here (a hostile model may repeat an initializer name):
    callers that index by key refuse repeats themselves.
    """
    for init in graph.initializer:
        yield Site(f"{scope}init:{init.name}", scope, graph, init, None)
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    yield Site(f"{scope}node{i}:{node.output[0] if node.output else ''}", scope, graph, attr.t, node)
        for name, sub in subgraphs(node):
            yield from walk_sites(sub, f"{scope}node{i}.{name}/")


def split_key(key: str) -> tuple[str, str]:
    """('init' or 'nodeI', the initializer's or Constant output's name) of a tensor key.

    Raises:
        FormatError: the key does not follow the scheme.
    """
    m = _KEY.fullmatch(key)
    if m is None:
        raise FormatError(f"malformed tensor key {key[:200]!r}")
    return m.group(2), m.group(3)
