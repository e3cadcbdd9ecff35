"""How much each tensor's error moves the model's outputs, measured without data: the `outputs` objective.

A weight tensor's relative error (1 / its SQNR) reaches the outputs scaled by a gain no weight
statistic tells: a classifier's last layer passes its error straight to the scores, a layer
before a normalization loses most of it. The gain is measured: each tensor in turn gets Gaussian
noise at a fixed relative energy (NOISE_DB below its signal) while the others stay float, the
model runs in its runtime on seeded random inputs drawn from its input specs (no data needed),
and the outputs' relative squared error over the noise's relative energy is that tensor's gain.
Quantization error is about as independent of the weights as that noise, so a sum of gains times
relative errors predicts the outputs' relative error (1 - cosine, twice over) of an allocation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from qpack.converter.allocate.options import Menu
from qpack.formats.errors import QpackError
from qpack.formats.model import SourceModel

NOISE_DB = 30.0  # the perturbation's SQNR: small enough to stay linear, large enough to read over float rounding
SAMPLES = 8  # random inputs each perturbed model runs
FLOOR = 1e-6  # the least gain a tensor gets (a tensor no output reads still costs bytes)


def output_gains(src: SourceModel, menus: list[Menu], workdir: Path,
                 log: Callable[[str], None] | None = None) -> list[float] | None:
    """Each menu's tensor's output gain, or None where the model does not run on random inputs
    (a custom op, inputs random values cannot stand for): the caller then weighs without them."""
    from qpack.converter.evaluate import random_samples, run_all
    from qpack.converter.runtime import open_runner
    from qpack.formats.registry import restore_model

    try:
        runner = open_runner(src.path)
        inputs = random_samples(runner.inputs, SAMPLES)
        reference = [np.asarray(o, np.float64) for o in run_all(runner, inputs)]
    except QpackError as e:
        if log:
            log(f"outputs objective: the model does not run on random inputs ({e}); weighing by balanced")
        return None
    energy = sum(float(np.square(r).sum()) for r in reference)
    if not energy > 0 or not math.isfinite(energy):
        return None
    rel = 10 ** (-NOISE_DB / 10)
    out = Path(workdir) / f"gain.{src.format}"
    gains = []
    for i, m in enumerate(menus):
        w = m.weight
        x = np.asarray(w.array, dtype=np.float32)
        rng = np.random.default_rng(i)
        sigma = math.sqrt(m.signal / max(x.size, 1) * rel)
        noisy = (x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(sigma)).astype(x.dtype)
        try:
            restore_model(src.format, src.skeleton({w.key}), {w.key: partial(np.asarray, noisy)}, out)
            got = run_all(open_runner(out), inputs)
        except QpackError as e:
            if log:
                log(f"outputs objective: tensor '{w.name}' perturbed does not run ({e}); weighing by balanced")
            return None
        err = sum(float(np.square(np.asarray(g, np.float64) - r).sum()) for g, r in zip(got, reference))
        gains.append(max(err / energy / rel, FLOOR) if math.isfinite(err) else 1.0)
    return gains
