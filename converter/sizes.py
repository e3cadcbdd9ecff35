"""The size report: what the container costs against the float model, raw and compressed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from qpack.converter.convert import ConvertResult, db
from qpack.converter.measure import compressed_sizes
from qpack.converter.policy import ALREADY, QUANTIZED_ROLES, SPARSE_WIDER
from qpack.formats.model import FLOAT_DTYPES, SourceModel
from qpack.formats.qpk.meta import kept_shape


def source_bytes(model: SourceModel) -> bytes:
    """The float model as stored on disk (its external data files appended)."""
    return model.path.read_bytes() + b"".join(p.read_bytes() for p in model.external_files)


def size_report(model: SourceModel, result: ConvertResult, compressors: tuple[str, ...],
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All size figures of one conversion, as a JSON-ready dict (keys documented in docs/commands.md)."""
    quantized = sum(t.count for t in result.tensors)
    kept_float = sum(int(w.size) for w in model.weights if w.is_float) - quantized
    packed = sum(t.packed_bytes for t in result.tensors)
    stored = sum(t.stored_bytes for t in result.tensors)
    params = sum(t.param_bytes for t in result.tensors)
    entropy_total = sum(t.entropy * t.count for t in result.tensors)
    known = all(t.context_entropy is not None for t in result.tensors)
    context_total = sum((t.context_entropy or 0.0) * t.count for t in result.tensors)
    signal, noise = sum(t.signal for t in result.tensors), sum(t.noise for t in result.tensors)
    compressed: dict[str, dict[str, int]] = {}
    if compressors:  # reading a large model back is only worth it when something compresses it
        items = {"original": source_bytes(model), "qpk": result.path.read_bytes()}
        compressed = compressed_sizes(items, compressors, progress)
    tensors = [dict(asdict(t), sqnr_db=t.sqnr_db) for t in result.tensors]
    kept = [asdict(k) for k in result.kept]
    return {
        "source": {"path": str(model.path), "format": model.format},
        "sizes": {
            "original_bytes": model.file_bytes,
            "float32_weight_bytes": 4 * (quantized + kept_float),
            "quantized_params": quantized,
            "float_params_kept": kept_float,
            "quantized_share": round(quantized / (quantized + kept_float), 4) if quantized + kept_float else None,
            "packed_code_bytes": packed,
            "stored_code_bytes": stored,
            "param_bytes": params,
            "graph_bytes": result.graph_bytes,
            "qpk_bytes": result.size,
            "ratio_vs_original": round(model.file_bytes / result.size, 4) if result.size else None,
            "bits_per_weight": round((stored + params) * 8 / quantized, 4) if quantized else None,
            "entropy_bits_per_weight": round(entropy_total / quantized, 4) if quantized else None,
            "entropy_limit_bytes": int(-(-entropy_total // 8)),
            "sqnr_db": db(signal, noise),
            **({"context_entropy_bits_per_weight": round(context_total / quantized, 4) if quantized else None,
                "context_limit_bytes": int(-(-context_total // 8))} if known else {}),
        },
        "compressed": compressed,
        "tensors": tensors,
        "kept": kept,
        "notes": notes(tensors, kept),
    }


def notes(tensors: list[dict[str, Any]], kept: list[dict[str, Any]]) -> list[str]:
    """One-line remarks on a conversion that a user would otherwise wonder about (reports print
    them as `note:` lines): weights that came quantized already, and sparse weights given more bits
    than asked because the target runs no fewer."""
    line = already_quantized(tensors, kept)
    wider = Counter(str(t["why"]) for t in tensors if str(t.get("why", "")).startswith(SPARSE_WIDER))
    return ([line] if line else []) + [f"{n} tensor{'s' if n > 1 else ''}, each {why}" for why, n in sorted(wider.items())]


def already_quantized(tensors: list[dict[str, Any]], kept: list[dict[str, Any]]) -> str | None:
    """What a model whose weights came integer-quantized (an int8 QDQ, dynamic or TFLite model)
    gets from qpack, in a line: how many weight tensors, in what form, and what qpack still does
    with it; None when no weight came quantized.

    `tensors` are the ones quantized, `kept` those left in the graph (rows of a report, or of a
    container's metadata). Weight tensors are kernels, matrices and tables: two or more
    dimensions, so zero points and integer biases are not counted.
    """
    done = [k for k in kept if str(k.get("reason", "")).startswith(ALREADY) and len(kept_shape(k)) >= 2]
    if not done:
        return None
    roles = {r.value for r in QUANTIZED_ROLES}
    floats = [k for k in kept if k.get("dtype") in FLOAT_DTYPES and k.get("role") in roles]
    total = len(done) + len(tensors) + len(floats)
    dtypes = Counter(str(k.get("dtype")) for k in done)
    kind = next(iter(dtypes)) if len(dtypes) == 1 else "integer (" + ", ".join(f"{n} {d}" for d, n in dtypes.most_common()) + ")"
    how = sorted({str(k["reason"])[len(ALREADY):].strip(" ()") for k in done} - {""})
    head = f"{len(done)} of {total} weight tensors are already {kind}" + (f" ({', '.join(how[:3])})" if how else "")
    if tensors:
        return f"{head} and stay as they are in the graph; {len(tensors)} float tensors were quantized"
    return (f"{head}, and qpack quantizes float weights only: nothing was quantized. The .qpk holds the model as "
            "it is, its graph compressed with zstd; for fewer bits, convert the float model it came from")

