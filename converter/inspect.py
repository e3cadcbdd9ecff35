"""Describe a .qpk container without restoring it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qpack.converter.export import fit
from qpack.converter.render import exports_line
from qpack.formats.errors import shown
from qpack.formats.qpk import QpkReader

MAX_ROWS = 500  # a terminal table past this helps nobody; --json has every row


def describe(path: Path, verify: bool = True) -> dict[str, Any]:
    """Header, options and per-tensor layout of a container; checksums checked when `verify`."""
    with QpkReader(path) as q:
        if verify:
            q.verify()
        blobs = q.blobs
        tensors = []
        for e in q.entries:
            codes = blobs[e.codes]
            tensors.append({
                "name": e.name, "key": e.key, "shape": list(e.shape), "dtype": e.dtype, "role": e.role,
                "scheme": e.scheme, "bits": e.bits, "axis": e.axis, "grouping": e.grouping.kind, "block": e.grouping.block,
                "count": e.count,
                "code_bytes": codes.length, "param_bytes": sum(blobs[i].length for i in e.params.values()),
                "sha256": codes.sha256.hex(),
            })
        return {
            "path": str(path), "bytes": q.size, "version": ".".join(map(str, q.version)),
            "format": q.format, "qpack": q.info["qpack"], "source": q.info["source"],
            "options": q.info["options"], "verified": verify,
            "graph_bytes": blobs[q.graph_index].length, "tensors": tensors, "kept": q.kept,
            # per export target: the tensors it does not run as stored (widened, decoded, or refused), its bytes
            "exports": fit(q),
        }


def render_description(info: dict[str, Any], console: Console) -> None:
    src = info.get("source") or {}
    # names come from the file: escaped, so a hostile one cannot break lines or send terminal escape sequences
    name = shown(src["name"]) if isinstance(src.get("name"), str) else None
    console.print(f"{info['path']}: qpk {info['version']}, {info['bytes']:,} bytes, {info['format']} model "
                  f"'{name}' ({src.get('bytes', 0):,} bytes), options {info['options']}")
    t = Table(title_justify="left")
    for col in ("name", "shape", "dtype", "scheme", "bits", "axis", "code bytes", "param bytes", "sha256"):
        t.add_column(col, justify="right" if "bytes" in col or col in ("bits", "axis") else "left")
    for r in info["tensors"][:MAX_ROWS]:
        t.add_row(shown(r["name"]), "x".join(map(str, r["shape"])), r["dtype"], r["scheme"], str(r["bits"]),
                  "-" if r["axis"] is None else str(r["axis"]) + (f" /{r['block']}" if r.get("block") else ""),
                  f"{r['code_bytes']:,}", f"{r['param_bytes']:,}", r["sha256"][:16])
    console.print(t)
    if len(info["tensors"]) > MAX_ROWS:
        console.print(f"... {len(info['tensors']) - MAX_ROWS:,} more tensors (all of them in --json)")
    console.print(f"{len(info['tensors'])} quantized tensors, {len(info['kept'])} kept in the graph "
                  f"({info['graph_bytes']:,} bytes compressed); checksums {'verified' if info['verified'] else 'not checked'}")
    if info.get("exports"):
        console.print(exports_line(info["exports"], info["options"].get("for")))
