"""Fidelity of a quantized model against its original, both run in a real runtime on the same inputs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.convert import convert, restore
from qpack.converter.datasets import Inputs, check_shapes
from qpack.converter.measure import sqnr_db
from qpack.converter.policy import Policy
from qpack.converter.runtime import InputSpec, Runner, open_runner, random_inputs
from qpack.formats.atomic import scratch_folder
from qpack.formats.errors import OptionError, QpackError, shown
from qpack.formats.model import Head
from qpack.formats.qpk import QpkReader
from qpack.formats.registry import a_model, open_model, sniff

BATCH = 256


def run_all(runner: Runner, inputs: Inputs) -> list[NDArray]:
    """Outputs over all samples: in batches when the model's batch dimension is free, else one by one."""
    check_shapes(inputs, runner.inputs)
    batched = [s for s in runner.inputs if s.name in inputs.arrays]
    # values fed whole (a state of batch one, say) pin the batch: then one sample at a time
    free = all(s.shape and s.shape[0] is None for s in batched) and not inputs.constants
    step = BATCH if free else 1
    fixed = [s.shape[0] for s in batched if s.shape and s.shape[0] not in (None, 1)]
    if not free and fixed:
        step = int(fixed[0])
        if inputs.count % step:
            raise OptionError(f"the model takes batches of exactly {step}; {inputs.count} samples do not divide")
    parts: list[list[NDArray]] = []
    for i in range(0, inputs.count, step):
        feeds = {k: np.ascontiguousarray(v[i : i + step]) for k, v in inputs.arrays.items()}
        feeds.update(inputs.constants)
        parts.append(runner.run(feeds))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


PROBABILITY_TOLERANCE = 1e-3  # how far from 1 a row of probabilities may sum (float32 softmax rounding)


def output_heads(model: Path) -> dict[str, Head]:
    """What computes each output of `model` (formats.model.Head), by output name; read once per
    version of the file (an allocation compares many trials against one model)."""
    st = Path(model).stat()
    return dict(_heads(str(Path(model).resolve()), st.st_mtime_ns, st.st_size))


@lru_cache(maxsize=8)
def _heads(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Head], ...]:
    with closing(open_model(Path(path))) as src:
        return tuple(src.output_heads().items())


def class_scores(out: NDArray, head: Head | None, labelled: bool) -> NDArray | None:
    """The [N, classes] view of an output that holds class scores, else None: it is a regression.

    An output holds class scores when it has one axis of at least two values per sample (_logits)
    and a softmax computes it, or its rows are probabilities (non-negative, summing to 1) or
    log-probabilities; or a dense layer computes it (logits); or the inputs carry labels for it. The
    rest (what a convolution or an activation computes: landmarks, boxes, masks, normalized
    embeddings) is judged by its errors.
    """
    lr = _logits(out)
    if lr is None:
        return None
    return lr if labelled or head in (Head.SOFTMAX, Head.DENSE) or _probabilities(lr) else None


def _probabilities(rows: NDArray) -> bool:
    """Whether every row is a probability vector, or the logarithm of one (a softmax's output)."""
    x = rows.astype(np.float64)
    if not np.isfinite(x).all():
        return False
    if (x >= 0).all():
        return bool(np.allclose(x.sum(1), 1, rtol=0, atol=PROBABILITY_TOLERANCE))
    if (x <= 0).all():
        top = x.max(1)
        return bool(np.allclose(top + np.log(np.exp(x - top[:, None]).sum(1)), 0, rtol=0, atol=PROBABILITY_TOLERANCE))
    return False


def _logits(out: NDArray) -> NDArray | None:
    """A [N, classes] view of an output shaped [N, C] (or [N, C, 1, ...]), else None.

    Outputs with more than one non-trivial dimension after the batch (boxes x scores, say) are not
    class scores, and are judged by cosine and SQNR alone.
    """
    if out.ndim < 2:
        return None
    rest = [d for d in out.shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < 2:
        return None
    return out.reshape(out.shape[0], rest[0])


def worst_input_cosine(ref: NDArray, got: NDArray, count: int) -> float | None:
    """The least cosine of one input's share of an output. A mask or a detector's scores are used an
    input at a time, and over a draw of inputs the few with the largest outputs outweigh the rest:
    the cosine over all of them hides inputs the quantized model gets wrong (a selfie segmenter kept
    0.998 on 16 random images and 0.21 on one of them), and another draw led by such an input lands
    low. None where the output is not a row per input (batch first), or one value per input (its
    cosine is a sign); inputs whose original output is all zeros have no direction to keep and are
    left out. A cosine that is not a number (an infinite output) counts as -1."""
    if count < 2 or ref.ndim == 0 or ref.shape[0] != count or ref.size // count < 2:
        return None
    r, g = (np.asarray(a, dtype=np.float64).reshape(count, -1) for a in (ref, got))  # no copy when float64 already
    rr, gg, rg = (np.einsum("ij,ij->i", a, b) for a, b in ((r, r), (g, g), (r, g)))
    live = rr > 0
    if not live.any():
        return None
    denom = np.sqrt(rr[live] * gg[live])
    with np.errstate(invalid="ignore"):
        cos = np.divide(rg[live], denom, out=np.zeros_like(denom), where=denom > 0)
    return round(float(np.nan_to_num(cos, nan=-1.0).min()), 6)


def output_fidelity(ref: list[NDArray], got: list[NDArray], names: list[str], count: int = 0) -> list[dict[str, Any]]:
    """Per output: cosine, SQNR and largest error over all inputs; with the inputs' `count`, also the
    worst single input's cosine (worst_input_cosine) where the output has one."""
    rows = []
    for name, r, g in zip(names, ref, got):
        r64, g64 = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
        denom = np.linalg.norm(r64) * np.linalg.norm(g64)
        with np.errstate(invalid="ignore"):
            cos = float(r64 @ g64 / denom) if denom > 0 else float(np.array_equal(r64, g64))
        cos = cos if math.isfinite(cos) else -1.0  # an infinite or NaN output keeps no direction
        s = sqnr_db(r64, g64)
        row = {"output": name, "cosine": round(cos, 6), "sqnr_db": None if not np.isfinite(s) else round(s, 3),
               "max_abs_error": float(np.abs(r64 - g64).max()) if r64.size else 0.0}
        worst = worst_input_cosine(r64.reshape(r.shape), g64.reshape(g.shape), count)
        if worst is not None:
            row["worst_input_cosine"] = worst
        rows.append(row)
    return rows


def regression(ref: list[NDArray], got: list[NDArray], names: list[str], scores: list[bool],
               fidelity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per output that does not hold class scores (`scores` False): largest and mean absolute error,
    the RMS error relative to the RMS of the original output, and the cosine (from `fidelity`)."""
    rows = []
    for name, r, g, is_scores, fid in zip(names, ref, got, scores, fidelity):
        if is_scores:
            continue
        r64, g64 = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(r64 - g64)
            norm = float(np.linalg.norm(r64))
            rel = float(np.linalg.norm(r64 - g64)) / norm if norm > 0 else None
        rows.append({"output": name, "max_abs_error": _finite(err.max() if err.size else 0.0),
                     "mean_abs_error": _finite(err.mean() if err.size else 0.0),
                     "relative_rms_error": None if rel is None else _finite(rel), "cosine": fid["cosine"]})
    return rows


def _finite(v: Any) -> float | None:
    """A figure for the report: None where the outputs held infinities or NaN."""
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def confusion(labels: NDArray[np.int64], preds: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """k x k counts: rows are true classes, columns predictions."""
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def auto_groups(conf_ref: NDArray, conf_q: NDArray, threshold: float) -> list[list[int]]:
    """Classes whose mutual confusion grows under quantization, merged by average-linkage clustering.

    The affinity of classes i and j is the growth of the rate at which each is taken for the other
    (row-normalized confusion, quantized minus original, symmetrized). Classes join a group when
    their average affinity reaches `threshold`.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    k = conf_q.shape[0]
    rows_ref = np.maximum(conf_ref.sum(1, keepdims=True), 1)
    rows_q = np.maximum(conf_q.sum(1, keepdims=True), 1)
    growth = np.clip(conf_q / rows_q - conf_ref / rows_ref, 0, None)
    affinity = (growth + growth.T) / 2
    np.fill_diagonal(affinity, 0)
    if k < 2 or affinity.max() < threshold:
        return []
    dist = 1 - np.clip(affinity, 0, 1)
    np.fill_diagonal(dist, 0)
    clusters = fcluster(linkage(squareform(dist, checks=False), "average"), t=1 - threshold, criterion="distance")
    groups = [sorted(np.flatnonzero(clusters == c).tolist()) for c in np.unique(clusters)]
    return sorted(g for g in groups if len(g) > 1)


def load_groups(path: Path, k: int) -> list[list[int]]:
    """A grouping file: JSON, a list of lists of class indices (or {"groups": ...}); disjoint, in range."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise OptionError(f"{path}: not a JSON grouping file ({e})") from e
    groups: Any = data.get("groups") if isinstance(data, dict) else data
    ok = isinstance(groups, list) and all(isinstance(g, list) and g and all(isinstance(c, int) and not isinstance(c, bool) for c in g)
                                           for g in groups)
    if not ok:
        raise OptionError(f"{path}: expected a list of lists of class indices, e.g. [[3, 5], [8, 9]]")
    seen: set[int] = set()
    for g in groups:
        for c in g:
            if not 0 <= c < k:
                raise OptionError(f"{path}: class {c} is out of range 0..{k - 1}")
            if c in seen:
                raise OptionError(f"{path}: class {c} is in two groups")
            seen.add(c)
    return [sorted(g) for g in groups]


def grouped_accuracy(labels: NDArray, preds: NDArray, groups: list[list[int]], k: int) -> float:
    """Accuracy when a prediction anywhere in the label's group counts as right."""
    ids = np.arange(k)
    for g in groups:
        ids[g] = g[0]
    return float((ids[preds] == ids[labels]).mean())


def classification(ref: NDArray, got: NDArray, labels: NDArray | None, groups: list[list[int]] | None,
                   group_threshold: float, head: Head | None = None, where: str = "labels") -> dict[str, Any] | None:
    """Top-1 agreement, accuracy, confusion matrices and class grouping of an output that holds class
    scores (class_scores, `head` being what computes it), else None.

    Raises:
        OptionError: a label is not one of the model's classes (`where` names the inputs).
    """
    lr, lg = class_scores(ref, head, labels is not None), _logits(got)
    if lr is None or lg is None:
        return None
    pr, pg = lr.argmax(1), lg.argmax(1)
    out: dict[str, Any] = {"top1_agreement": round(float((pr == pg).mean()), 6), "classes": int(lr.shape[1])}
    if labels is None:
        return out
    k = int(lr.shape[1])
    # labels index k x k confusion matrices: one past the model's classes is a misnumbered label file
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if len(bad):
        i = int(bad[0])
        raise OptionError(f"{where}: label {labels[i]} at sample {i} is not one of the model's {k} classes (0..{k - 1})")
    acc_ref, acc_q = float((pr == labels).mean()), float((pg == labels).mean())
    cr, cq = confusion(labels, pr, k), confusion(labels, pg, k)
    source = "file"
    if groups is None:
        groups, source = auto_groups(cr, cq, group_threshold), "auto"
    grown = cq - cr
    np.fill_diagonal(grown, 0)
    pairs = [{"true": int(i), "predicted": int(j), "original": int(cr[i, j]), "quantized": int(cq[i, j])}
             for i, j in zip(*np.unravel_index(np.argsort(-grown, axis=None), grown.shape)) if grown[i, j] > 0][:10]
    out.update(
        accuracy_original=round(acc_ref, 6), accuracy_quantized=round(acc_q, 6),
        accuracy_delta_points=round(100 * (acc_q - acc_ref), 3),
        confusion_original=cr.tolist(), confusion_quantized=cq.tolist(), confusion_growth=pairs,
        groups=groups, group_source=source,
        grouped_accuracy_original=round(grouped_accuracy(labels, pr, groups, k), 6),
        grouped_accuracy_quantized=round(grouped_accuracy(labels, pg, groups, k), 6),
    )
    return out


@contextmanager
def quantized_copy(model: Path, qpk: Path | None, policy: Policy | None) -> Iterator[Path]:
    """A restored model file from `qpk`, or from converting `model` under `policy`, in a temporary folder."""
    suffix = "." + sniff(model)  # the restored file's name must say its format, whatever the model's says
    with scratch_folder("qpack-eval-") as tmp:
        if qpk is None:
            if policy is None:
                raise OptionError("give --qpk or quantization options")
            qpk = Path(tmp) / "model.qpk"
            with closing(open_model(model)) as src:
                convert(src, policy, qpk)
        else:
            check_made_from(qpk, model)
        out = Path(tmp) / f"restored{suffix}"
        restore(qpk, out)
        yield out


def check_made_from(qpk: Path, model: Path) -> None:
    """That container `qpk` was converted from `model`: the same format, and every tensor it records
    (quantized or kept) one of the model's, of the same shape. Raises OptionError naming both paths."""
    fmt = sniff(model)
    with QpkReader(qpk) as q:
        made = q.info["source"].get("name")
        origin = f" (made from {made})" if made else ""
        if q.format != fmt:
            raise OptionError(f"--qpk {qpk} holds {a_model(q.format)}{origin}, and {model} is {a_model(fmt)}: "
                              f"give the container converted from {model.name}")
        recorded = [(e.name, e.key, list(e.shape)) for e in q.entries]
        recorded += [(str(k.get("name")), k["key"], k["shape"]) for k in q.kept
                     if isinstance(k.get("key"), str) and isinstance(k.get("shape"), list)]
    with closing(open_model(model)) as src:
        shapes = {w.key: list(w.shape) for w in src.weights}
    for name, key, shape in recorded:
        if key not in shapes or shapes[key] != shape:
            there = "is not in the model" if key not in shapes else f"has shape {shapes[key]} in the model"
            raise OptionError(f"--qpk {qpk} was not converted from {model}{origin}: its tensor '{shown(name)}' "
                              f"(shape {shape}) {there}")


def evaluate(model: Path, inputs: Inputs, qpk: Path | None = None, policy: Policy | None = None,
             groups_file: Path | None = None, group_threshold: float = 0.05,
             reference: list[NDArray] | None = None,
             parts: Sequence[tuple[Inputs, list[NDArray]]] = ()) -> dict[str, Any]:
    """Run original and quantized models on `inputs`; per-output fidelity and, for classifiers, accuracy
    (see compare)."""
    with quantized_copy(model, qpk, policy) as restored:
        return compare(model, restored, inputs, groups_file, group_threshold, reference, parts)


def compare(model: Path, other: Path, inputs: Inputs, groups_file: Path | None = None, group_threshold: float = 0.05,
            reference: list[NDArray] | None = None,
            parts: Sequence[tuple[Inputs, list[NDArray]]] = ()) -> dict[str, Any]:
    """Run `model` and another model file of its graph on `inputs`; per-output fidelity and, for
    classifiers, accuracy.

    `parts`: subsets of the inputs with the original's outputs on them; the result's "parts" holds
    each one's per-output fidelity.
    """
    # the original runs only when its outputs are not handed in (a sweep computes them once)
    ref = reference if reference is not None else run_all(open_runner(model), inputs)
    quantized = open_runner(other)
    got = run_all(quantized, inputs)
    got_parts = [run_all(quantized, p) for p, _ in parts]
    if [r.shape for r in ref] != [g.shape for g in got]:
        raise QpackError("the quantized model's outputs differ in shape from the original's")
    names = quantized.output_names
    heads = output_heads(model)
    scores = [class_scores(r, heads.get(n), inputs.labels is not None and i == 0) is not None
              for i, (n, r) in enumerate(zip(names, ref))]  # labels are the first output's
    groups = None
    if groups_file is not None:
        lr = _logits(ref[0])
        if lr is None or inputs.labels is None:
            raise OptionError("--groups needs a classifier and labelled inputs")
        groups = load_groups(groups_file, lr.shape[1])
    fidelity = output_fidelity(ref, got, names, inputs.count)
    return {
        "model": str(model), "inputs": inputs.description, "samples": inputs.count,
        "outputs": fidelity,
        "classification": classification(ref[0], got[0], inputs.labels, groups, group_threshold, heads.get(names[0]),
                                         inputs.description),
        "regression": regression(ref, got, names, scores, fidelity),
        **({"parts": [{"inputs": p.description, "samples": p.count, "outputs": output_fidelity(r, g, quantized.output_names)}
                      for (p, r), g in zip(parts, got_parts)]} if parts else {}),
    }


CHECK_SAMPLES = 8  # seeded random inputs a report runs the source and the restored container on
CHECK_MAX_BYTES = 64 << 20  # above this model size a report does not run the models (qpack eval does)
CHECK_FREE_DIM = 32  # the size given to a free dimension past the batch


def random_samples(specs: list[InputSpec], count: int, seed: int = 0) -> Inputs:
    """`count` seeded random samples for a model's inputs: floats ~ N(0, 1), integers 0, free
    dimensions past the batch CHECK_FREE_DIM; an input fed whole (0-d, or a first dimension fixed
    and not 1: see converter.datasets.split) gets one value."""
    whole = [s for s in specs if not s.shape or s.shape[0] not in (None, 1)]
    batched = [InputSpec(s.name, (count, *s.shape[1:]), s.dtype) for s in specs if s not in whole]
    what = (f"{count} seeded random inputs (floats drawn from N(0, 1) with seed {seed}, integers 0, "
            f"free dimensions {CHECK_FREE_DIM})")
    return Inputs(random_inputs(batched, seed, CHECK_FREE_DIM), None, what, random_inputs(whole, seed + 1, CHECK_FREE_DIM))


def random_check(model: Path, qpk: Path) -> dict[str, Any]:
    """The container's restored model against its source `model` on CHECK_SAMPLES seeded random
    inputs: compare()'s figures ("inputs", "samples", "outputs", "classification", "regression"), or
    {"skipped": why} for a model over CHECK_MAX_BYTES or one that does not run on such inputs."""
    size = Path(model).stat().st_size
    if size > CHECK_MAX_BYTES:
        return {"skipped": f"the model is over {CHECK_MAX_BYTES >> 20} MiB; qpack eval compares them on real inputs"}
    try:
        runner = open_runner(model)
        inputs = random_samples(runner.inputs, CHECK_SAMPLES)
        reference = run_all(runner, inputs)
        with quantized_copy(model, qpk, None) as restored:
            result = compare(model, restored, inputs, reference=reference)
    except QpackError as e:
        return {"skipped": f"the models did not run on random inputs ({e}); qpack eval compares them on real inputs"}
    return {k: result[k] for k in ("inputs", "samples", "outputs", "classification", "regression")}


def fidelity_loss(result: dict[str, Any]) -> float:
    """Points lost: accuracy drop with labels, else 100 - top-1 agreement %, else 100 * (1 - mean cosine)."""
    c = result.get("classification")
    if c and "accuracy_original" in c:
        return round(100 * (c["accuracy_original"] - c["accuracy_quantized"]), 3)
    if c:
        return round(100 * (1 - c["top1_agreement"]), 3)
    return round(100 * (1 - float(np.mean([o["cosine"] for o in result["outputs"]]))), 3)
