"""`qpack report`: per-tensor figures, sizes and pictures for a model (at given options) or a .qpk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from qpack.converter.analysis import analyze
from qpack.converter.convert import convert
from qpack.converter.evaluate import random_check
from qpack.converter.measure import compressed_sizes
from qpack.converter.policy import Policy
from qpack.converter.sizes import notes, size_report
from qpack.formats.atomic import scratch_folder
from qpack.formats.errors import OptionError
from qpack.formats.model import SourceModel
from qpack.formats.qpk import RAW, Codec
from qpack.formats.qpk.spec import FLOAT_DTYPES

HISTOGRAM_WIDTHS = (8, 6, 4, 3, 2)


def report_model(model: SourceModel, policy: Policy, compressors: tuple[str, ...], codec: Codec = RAW) -> dict[str, Any]:
    """Convert into a temporary container, so every size is that of a real artifact, and analyze it."""
    with scratch_folder("qpack-report-") as tmp:
        qpk = Path(tmp) / "model.qpk"
        result = convert(model, policy, qpk, codec=codec)
        sizes = size_report(model, result, compressors)
        rep = analyze(qpk, model)
        rep["fidelity"] = random_check(model.path, qpk)
    rep.pop("source_bytes", None)  # sizes has the model's own
    rep.update(source=str(model.path), sizes=sizes["sizes"], compressed=sizes["compressed"], notes=sizes["notes"])
    return rep


def report_qpk(qpk: Path, source: SourceModel | None, compressors: tuple[str, ...]) -> dict[str, Any]:
    """Figures of what a container stores (SQNR only when the float `source` is given)."""
    rep = analyze(qpk, source)
    compressed = compressed_sizes({"qpk": qpk.read_bytes()}, compressors) if compressors else {}
    rep["compressed"] = {c: {"qpk": v["qpk"]} for c, v in compressed.items()}
    rep["source"] = str(qpk)
    stored = sum(r["stored_bytes"] for r in rep["tensors"])
    n = rep["totals"]["params"]
    kept = sum(math.prod(k["shape"]) for k in rep["kept"] if k.get("dtype") in FLOAT_DTYPES and _dims(k.get("shape")))
    rep["sizes"] = {"qpk_bytes": rep["qpk_bytes"], "graph_bytes": rep["graph_bytes"], "stored_code_and_param_bytes": stored,
                    "bits_per_weight": round(stored * 8 / n, 4) if n else None,
                    "quantized_share": round(n / (n + kept), 4) if n + kept else None}
    recorded = rep.pop("source_bytes", None)  # the source's size as the container recorded it
    original = source.file_bytes if source is not None else recorded
    if original:
        rep["sizes"].update(original_bytes=original, ratio_vs_original=round(original / rep["qpk_bytes"], 4))
    rep["source_model"] = None if source is None else str(source.path)
    rep["notes"] = notes(rep["tensors"], rep["kept"])
    if source is not None:
        rep["fidelity"] = random_check(source.path, qpk)
    return rep


def _dims(v: Any) -> bool:
    """A kept tensor's shape as the container records it (informative, so checked before use)."""
    return isinstance(v, list) and len(v) <= 16 and all(type(d) is int and 0 <= d < 2**40 for d in v)


def report_path(path: Path, policy: Policy, codec: Codec, compress: str,
                source: Path | None = None) -> tuple[dict[str, Any], SourceModel | None]:
    """The report of a model file at `policy`, or of a .qpk (against its float `source` when given).

    Returns the report and the source model whose floats the pictures can use.
    """
    from qpack.converter.measure import parse_compressors
    from qpack.formats.registry import open_model, sniff

    if sniff(path) == "qpk":
        src = open_model(source) if source else None
        rep = report_qpk(path, src, parse_compressors(compress, path.stat().st_size))
        # pictures re-quantize the floats as the container did: its first tensor's (validated) settings
        first = rep["tensors"][0] if rep["tensors"] else {"bits": policy.bits, "scheme": policy.scheme, "axis": None}
        rep["figure_options"] = {"bits": first["bits"], "scheme": first["scheme"], "per_channel": first["axis"] is not None}
        return rep, src
    src = open_model(path)
    rep = report_model(src, policy, parse_compressors(compress, src.file_bytes), codec)
    rep["options"] = policy.options(codec.name)
    rep["figure_options"] = {"bits": policy.bits, "scheme": policy.scheme, "per_channel": policy.per_channel}
    return rep, src


def floats_known(rep: dict[str, Any]) -> bool:
    return all(r["signal"] is not None for r in rep["tensors"])


def write_html(rep: dict[str, Any], src: SourceModel | None, layer: str | None, html_out: Path, command: str) -> None:
    """The self-contained page, and its pictures beside it as NAME_figK.png."""
    from qpack.converter.html import page
    from qpack.formats.atomic import write_bytes_atomic

    fo = rep["figure_options"]
    images = pictures(rep, src, layer, fo["bits"], fo["scheme"], fo["per_channel"])
    stem = html_out.with_suffix("")
    rep["figures"] = {}
    for i, (title, png) in enumerate(images.items()):
        png_path = Path(f"{stem}_fig{i + 1}.png")
        write_bytes_atomic(png_path, png)
        rep["figures"][title] = str(png_path)
    write_bytes_atomic(html_out, page(rep, images, command).encode())


def pictures(rep: dict[str, Any], source: SourceModel | None, layer: str | None, bits: int, scheme: str,
             per_channel: bool) -> dict[str, bytes]:
    """The three figures: channel quartiles and histograms of one layer (needs floats), per-layer bars."""
    from qpack.converter import plots

    images = {}
    if source is not None and rep["tensors"]:
        floats = {w.key: w for w in source.weights}
        rows = rep["tensors"]
        if layer is None:
            chosen = next((r for r in rows if r["role"] == "kernel"), rows[0])
        else:
            chosen = next((r for r in rows if r["name"] == layer or r["key"] == layer), None)
            if chosen is None:
                raise OptionError(f"--layer {layer!r} is not a quantized tensor of this model")
        w = floats[chosen["key"]]
        x = np.asarray(w.array, np.float32)
        images[f"Per-channel quartiles of {chosen['name']}"] = plots.channel_quartiles(chosen["name"], x, w.axis, bits, per_channel)
        images[f"Histograms of {chosen['name']}"] = plots.histograms(chosen["name"], x, scheme, w.axis if per_channel else None,
                                                                      HISTOGRAM_WIDTHS)
        rep["figure_layer"] = chosen["name"]
    if rep["tensors"]:
        images["Bits and bytes per layer"] = plots.layer_bars(rep["tensors"])
    return images
