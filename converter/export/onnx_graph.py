"""ONNX plumbing shared by the runtime exports: find stored tensors by key, rewrite graphs, raise the
opset, validate and write.

Stored tensors are found by the keys `formats.onnx_keys` gives them, the walk the container's
writer used, which is all this module assumes about how the container was made.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import GraphProto, ModelProto, NodeProto, TensorProto

from qpack.formats.atomic import atomic_output
from qpack.formats.errors import FormatError, UnsupportedError
from qpack.formats.onnx_keys import DEFAULT_DOMAINS, Site, walk_graphs, walk_sites
from qpack.formats.onnx_model import parse_model
from qpack.formats.qpk import QpkReader

MS_DOMAIN = "com.microsoft"
# protobuf cannot serialize a message of 2 GiB or more
_MAX_MODEL_BYTES = (1 << 31) - 1
_TAG = "qpack.export.tag."


def sites(model: ModelProto) -> dict[str, Site]:
    """Every initializer and Constant value of the model, by its container key."""
    return {site.key: site for site in walk_sites(model.graph)}


def consumers(model: ModelProto, name: str) -> list[NodeProto]:
    """Nodes anywhere in the model that read `name` (names are unique model-wide in valid ONNX)."""
    return [n for _, g in walk_graphs(model.graph) for n in g.node if name in n.input]


def readers(model: ModelProto) -> dict[str, list[NodeProto]]:
    """consumers() of every value at once: the nodes anywhere in the model (subgraphs read outer values
    too) that read it, each node once per value."""
    out: dict[str, list[NodeProto]] = {}
    for _, g in walk_graphs(model.graph):
        for n in g.node:
            for i in dict.fromkeys(n.input):
                out.setdefault(i, []).append(n)
    return out


def default_opset(model: ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=1)


def load_skeleton(reader: QpkReader, keys: list[str]) -> tuple[ModelProto, dict[str, Site]]:
    """The stored graph and the site of every key asked for.

    Raises:
        FormatError: a key is not in the stored graph.
    """
    model = parse_model(reader.graph(), f"{reader.path}: graph blob")
    found = sites(model)
    for key in keys:
        if key not in found:
            raise FormatError(f"{reader.path}: tensor {key!r} is not in the stored graph")
    return model, found


class Names:
    """Fresh value names: never one the model already uses anywhere (graph names share one scope)."""

    def __init__(self, model: ModelProto) -> None:
        used: set[str] = set()
        for _, g in walk_graphs(model.graph):
            used.update(t.name for t in g.initializer)
            used.update(v.name for v in [*g.input, *g.output, *g.value_info])
            for n in g.node:
                used.update(n.input)
                used.update(n.output)
        self._used = used

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name


@dataclass
class GraphEdit:
    """Changes to one graph, applied at once so node references stay valid while they are planned."""

    graph: GraphProto
    drop_inits: set[str] = field(default_factory=set)
    drop_nodes: set[str] = field(default_factory=set)  # Constant nodes, by their output
    inits: list[TensorProto] = field(default_factory=list)
    head: list[NodeProto] = field(default_factory=list)  # nodes that read only initializers go first

    def apply(self) -> None:
        g = self.graph
        kept_inits = [t for t in g.initializer if t.name not in self.drop_inits]
        kept_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in self.drop_nodes)]
        # an IR < 4 model lists its initializers as inputs too; a value made by a node cannot be one
        kept_inputs = [i for i in g.input if i.name not in self.drop_inits]
        del g.initializer[:]
        g.initializer.extend(kept_inits + self.inits)
        del g.node[:]
        g.node.extend(self.head + kept_nodes)
        del g.input[:]
        g.input.extend(kept_inputs)


class Edits:
    """GraphEdits by scope."""

    def __init__(self) -> None:
        self._by_scope: dict[str, GraphEdit] = {}

    def of(self, site: Site) -> GraphEdit:
        if site.scope not in self._by_scope:
            self._by_scope[site.scope] = GraphEdit(site.graph)
        return self._by_scope[site.scope]

    def remove(self, site: Site) -> None:
        """Take the float tensor out of its graph (its value is made by a node from now on)."""
        edit = self.of(site)
        if site.node is not None:
            edit.drop_nodes.add(site.value)
        else:
            edit.drop_inits.add(site.value)

    def apply(self) -> None:
        """Deepest scopes first: rebuilding a graph's node list copies its nodes, subgraphs and all, so an
        edit of a subgraph made after its parent's would change a copy the model no longer holds."""
        for scope in sorted(self._by_scope, key=lambda s: -s.count("/")):
            self._by_scope[scope].apply()


def raw_tensor(name: str, data_type: int, dims: tuple[int, ...] | list[int], raw: bytes | NDArray) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(int(d) for d in dims)
    t.raw_data = bytes(raw) if not isinstance(raw, np.ndarray) else raw.tobytes()
    return t


def _removed_op(model: ModelProto, opset: int) -> str | None:
    """A default-domain op of the model that opset `opset` no longer has, if any."""
    for _, g in walk_graphs(model.graph):
        for n in g.node:
            if n.domain in DEFAULT_DOMAINS and not onnx.defs.has(n.op_type, opset, ""):
                return n.op_type
    return None


def raise_opset(model: ModelProto, wanted: int, by_key: dict[str, Site], why: str = "") -> dict[str, Site]:
    """Move the model to default-domain opset `wanted` if it is below; returns the sites found again.

    onnx's version converter adapts ops whose meaning changed (Squeeze axes, Softmax coercion, ...).
    It keeps value names, so the stored tensors are found again by name: Constant values through a
    temporary tag in their (meaningless) tensor name, initializers by their own unique name.

    Raises:
        UnsupportedError: an op has no form at `wanted` or the converter cannot move it, or
            initializer names are not unique.
    """
    current = default_opset(model)
    if current >= wanted:
        return by_key
    move = f"cannot move the model from opset {current} to {wanted}" + (f" ({why})" if why else "")
    removed = _removed_op(model, wanted)
    if removed:
        raise UnsupportedError(f"{move}: opset {wanted} has no {removed}")
    if model.functions:  # the converter drops them, and their bodies would stay at the old opset
        raise UnsupportedError(f"{move}: the model defines local functions ({', '.join(f.name for f in model.functions[:3])}), "
                               "which onnx's version converter cannot move")
    init_names = [s.tensor.name for s in sites(model).values() if s.node is None]
    if len(set(init_names)) != len(init_names):
        raise UnsupportedError(f"{move}: initializer names repeat across subgraphs")
    tags: dict[str, str] = {}
    originals: dict[str, str] = {}
    for i, (key, site) in enumerate(by_key.items()):
        if site.node is not None:
            tag = f"{_TAG}{i}"
            originals[tag] = site.tensor.name
            site.tensor.name = tag
            tags[tag] = key
        else:
            tags[site.tensor.name] = key
    hinted = {v.name for _, g in walk_graphs(model.graph) for v in g.value_info}
    try:
        converted = onnx.version_converter.convert_version(model, wanted)
    except Exception as e:  # the converter raises RuntimeError or its own types, led by a source path
        detail = re.sub(r"^\S+:\d+: ", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise UnsupportedError(f"{move}: onnx's version converter failed ({detail})") from e
    model.CopyFrom(converted)
    for _, g in walk_graphs(model.graph):  # the shapes the converter inferred: hints no runtime needs, 7% of a small model
        keep = [v for v in g.value_info if v.name in hinted]
        if len(keep) != len(g.value_info):
            del g.value_info[:]
            g.value_info.extend(keep)
    relocated: dict[str, Site] = {}
    for site in sites(model).values():
        hit = tags.get(site.tensor.name)
        if hit is not None and (site.node is not None) == (by_key[hit].node is not None):
            if site.node is not None:
                site.tensor.name = originals[site.tensor.name]
            relocated[hit] = site
    missing = [k for k in by_key if k not in relocated]
    if missing:
        raise UnsupportedError(f"moving the model to opset {wanted} lost tensor {missing[0]!r}")
    return relocated


def set_opsets(model: ModelProto, default: int, extra: dict[str, int]) -> None:
    """Declare the opsets the rewritten graph uses, and an IR version that has their types."""
    for domain, version in extra.items():
        found = [o for o in model.opset_import if o.domain == domain]
        if found:
            found[0].version = max(found[0].version, version)
        else:
            model.opset_import.add(domain=domain, version=version)
    ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", default)], ignore_unknown=True)
    model.ir_version = max(model.ir_version, ir)


def write_model(model: ModelProto, out: Path) -> list[Path]:
    """Check and write the model atomically.

    Raises:
        UnsupportedError: onnx's checker rejects it, or it is too large for one protobuf.
    """
    size = model.ByteSize()
    if size > _MAX_MODEL_BYTES:
        raise UnsupportedError(f"the exported model is {size} bytes, over protobuf's 2 GiB limit")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise UnsupportedError(f"the exported model does not validate: {str(e).splitlines()[0]}") from e
    with atomic_output(out) as f:
        f.write(model.SerializeToString(deterministic=True))
    return [out]


@functools.cache
def ort_runs(model_bytes: bytes) -> bool:
    """Whether the installed onnxruntime loads and runs a tiny model (a capability probe)."""
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"]).run(None, {})
    except Exception:  # any failure means "not supported here"
        return False
    return True
