"""The size report: what the container costs against the float model, raw and compressed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from qpack.converter.convert import ConvertResult, db
from qpack.converter.measure import compressed_sizes
from qpack.formats.model import SourceModel


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
        "tensors": [dict(asdict(t), sqnr_db=t.sqnr_db) for t in result.tensors],
        "kept": [asdict(k) for k in result.kept],
    }
