"""The `outputs` objective's measured gains: each tensor's relative error times its gain predicts the outputs' error."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qpack
from qpack.converter.allocate import menus
from qpack.converter.allocate.sensitivity import output_gains
from qpack.converter.evaluate import random_samples, run_all
from qpack.converter.policy import Policy
from qpack.converter.runtime import open_runner
from qpack.formats.registry import open_model


def test_gains_predict_the_output_error_of_a_quantized_tensor(sample: Path, tmp_path: Path):
    """Quantizing one tensor at 4 bits: its gain times its relative weight error is the outputs'
    relative error on the same random inputs, within a factor of three (the gains themselves span ten:
    0.05 for the first dense layer, 0.49 for the one that writes the logits)."""
    with closing(open_model(sample)) as src:
        ms = menus(src, Policy("sym", 4))
        gains = output_gains(src, ms, tmp_path)
        arrays = {m.weight.name: np.asarray(m.weight.array, np.float32).copy() for m in ms}
    assert gains is not None and len(gains) == 5 and all(np.isfinite(g) and g > 0 for g in gains)
    runner = open_runner(sample)
    inputs = random_samples(runner.inputs, 8)
    reference = run_all(runner, inputs)
    energy = sum(float(np.square(r.astype(np.float64)).sum()) for r in reference)
    for m, gain in zip(ms, gains):
        qpk = tmp_path / "one.qpk"
        qpack.convert(sample, qpk, bits=4, scheme="sym", per_channel=True, include=[m.weight.name],
                      keep=[n for n in arrays if n != m.weight.name], compress="none")
        restored = tmp_path / "one.onnx"
        qpack.unpack(qpk, restored)
        with qpack.open(qpk) as q:
            (e,) = q.entries
            rel = float(np.square(q.dequantize(e) - arrays[m.weight.name]).sum()) / m.signal
        got = run_all(open_runner(restored), inputs)
        measured = sum(float(np.square(g.astype(np.float64) - r).sum()) for g, r in zip(got, reference)) / energy
        assert 1 / 3 < measured / (gain * rel) < 3, (m.weight.name, measured, gain * rel)


def test_a_model_random_inputs_cannot_run_falls_back(tmp_path: Path):
    """A reflect pad longer than the free dimension qpack gives random inputs: no gains, one log line."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((160, 8)).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 64, 0, 64], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"), helper.make_node("MatMul", ["p", "w"], ["y"])]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w, pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "pad.onnx")
    said: list[str] = []
    with closing(open_model(tmp_path / "pad.onnx")) as src:
        assert output_gains(src, menus(src, Policy("sym", 4)), tmp_path, said.append) is None
    assert len(said) == 1 and said[0].startswith("outputs objective: the model does not run on random inputs")
    report = qpack.convert(tmp_path / "pad.onnx", tmp_path / "pad.qpk", target_bpw=4, objective="outputs", compress="none")
    assert report["allocation"]["objective"] == "balanced"
