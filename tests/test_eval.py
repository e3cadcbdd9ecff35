"""qpack eval and sweep on the bundled sample and real third-party models with real inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.datasets import digits
from qpack.converter.evaluate import auto_groups, grouped_accuracy

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """scikit-learn's two real sample photos (a temple in China, a flower) as image files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(load_sample_images().images):
        Image.fromarray(img).save(folder / f"photo{i}.png")
        Image.fromarray(img[::-1, ::-1]).save(folder / f"photo{i}_flipped.png")
    return folder


def test_sweep_on_sample(sample: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    r = _run("sweep", sample, "--dataset", "digits", "--out", out, "--schemes", "asym,pow2", "--bits", "8,6,4,3,2",
             "--sensitivity-bits", "2")
    assert r.exit_code == 0, r.output
    result = json.loads((out / "sweep.json").read_text())
    float_acc = result["float_accuracy"]
    assert float_acc > 0.97
    cell = {(c["scheme"], c["granularity"], c["bits"]): c for c in result["cells"]}
    assert abs(cell[("asym", "tensor", 8)]["accuracy"] - float_acc) <= 0.01
    assert cell[("asym", "tensor", 2)]["accuracy"] < float_acc - 0.2
    assert result["knee_bits"]["asym/tensor"] in (3, 4, 5, 6)
    assert cell[("asym", "tensor", 2)]["qpk_bytes"] < cell[("asym", "tensor", 8)]["qpk_bytes"] / 2.5
    ranking = result["sensitivity"]["ranking"]
    assert len(ranking) == 5 and [r["rank"] for r in ranking] == [1, 2, 3, 4, 5]
    # each end of the ranking, re-measured on its own through eval: the same loss, and they differ
    names = [r["name"] for r in ranking]
    for row in (ranking[0], ranking[-1]):
        keep = [a for n in names if n != row["name"] for a in ("--keep", n)]
        js = tmp_path / "one.json"
        e = _run("eval", sample, "--dataset", "digits", "--bits", "2", "--scheme", "asym", *keep, "--json", js, "-q")
        assert e.exit_code == 0, e.output
        c = json.loads(js.read_text())["classification"]
        assert 100 * (c["accuracy_original"] - c["accuracy_quantized"]) == pytest.approx(row["loss_points"], abs=0.01)  # both rounded
    assert ranking[0]["loss_points"] > ranking[-1]["loss_points"] + 5
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2 * 5 and set(rows[0]) >= {"scheme", "bits", "accuracy", "qpk_bytes"}
    for png in ("accuracy_vs_bits.png", "accuracy_vs_size.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "knee" in r.output and "reproduce: qpack sweep" in r.output


def test_sweep_past_8_bits_takes_the_schemes_that_go_there(sample: Path, tmp_path: Path):
    """Widths 9..16 are sym's alone: the other schemes' cells stop at 8; 17 is refused in one line."""
    out = tmp_path / "wide"
    r = _run("sweep", sample, "--dataset", "digits", "--out", out, "--schemes", "sym,asym", "--bits", "10..8",
             "--granularity", "tensor", "-q")
    assert r.exit_code == 0, r.output
    cells = {(row["scheme"], int(row["bits"])) for row in csv.DictReader((out / "sweep.csv").open())}
    assert cells == {("sym", 10), ("sym", 9), ("sym", 8), ("asym", 8)}
    r = _run("sweep", sample, "--dataset", "digits", "--out", tmp_path / "x", "--bits", "17..8")
    assert r.exit_code == 1 and "must lie in 1..16" in r.output


def test_eval_third_party_onnx_on_photos(ocr_cls: Path, photos: Path, tmp_path: Path):
    js = tmp_path / "e.json"
    r = _run("eval", ocr_cls, "--images", photos, "--size", "48x192", "--layout", "nchw", "--scale", "1/255",
             "--mean", "0.5", "--std", "0.5", "--bits", "8", "--per-channel", "--json", js)
    assert r.exit_code == 0, r.output
    result = json.loads(js.read_text())
    assert result["samples"] == 4
    assert result["classification"]["top1_agreement"] == 1.0
    assert result["outputs"][0]["cosine"] > 0.995


def test_eval_tflite_on_photos(tfl_fp16: Path, photos: Path, tmp_path: Path):
    js = tmp_path / "e.json"
    r = _run("eval", tfl_fp16, "--images", photos, "--size", "128", "--layout", "nhwc", "--scale", "1/127.5", "--mean", "1",
             "--bits", "8", "--per-channel", "--json", js)
    assert r.exit_code == 0, r.output
    result = json.loads(js.read_text())
    assert result["samples"] == 4 and len(result["outputs"]) == 2
    assert min(o["cosine"] for o in result["outputs"]) > 0.99
    # the same container evaluated through --qpk gives the same figures
    qpk = tmp_path / "f.qpk"
    assert _run("convert", tfl_fp16, "--bits", "8", "--per-channel", "-o", qpk, "--compress", "none").exit_code == 0
    r = _run("eval", tfl_fp16, "--qpk", qpk, "--images", photos, "--size", "128", "--layout", "nhwc", "--scale", "1/127.5",
             "--mean", "1", "--json", tmp_path / "q.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "q.json").read_text())["outputs"] == result["outputs"]


def test_eval_judges_each_output_by_what_computes_it(tfl_fp32: Path, sample: Path, photos: Path, tmp_path: Path):
    """A landmark model's outputs (convolutions) get errors, not a top-1 agreement; a classifier's
    logits (a dense layer) keep their agreement without labels."""
    js = tmp_path / "landmarks.json"
    r = _run("eval", tfl_fp32, "--images", photos, "--size", "192", "--layout", "nhwc", "--bits", "6", "--json", js)
    assert r.exit_code == 0, r.output
    assert "top-1" not in r.output and "regression" in r.output and "mean abs error" in r.output
    result = json.loads(js.read_text())
    assert result["classification"] is None
    rows = result["regression"]
    assert [o["output"] for o in rows] == [o["output"] for o in result["outputs"]] == ["conv2d_20", "conv2d_30"]
    for row, out in zip(rows, result["outputs"]):
        assert 0 < row["mean_abs_error"] < row["max_abs_error"] == pytest.approx(out["max_abs_error"], rel=1e-5)
        assert 0 < row["relative_rms_error"] < 0.1 and row["cosine"] == out["cosine"]
        # the relative RMS error is the SQNR in other units
        assert row["relative_rms_error"] == pytest.approx(10 ** (-out["sqnr_db"] / 20), rel=1e-3)
    npy = tmp_path / "x.npy"  # the digits without their labels
    np.save(npy, digits()[0][:64])
    js = tmp_path / "digits.json"
    r = _run("eval", sample, "--inputs", npy, "--bits", "4", "--json", js)
    assert r.exit_code == 0 and "top-1 agreement" in r.output, r.output
    result = json.loads(js.read_text())
    assert result["classification"]["top1_agreement"] > 0.9 and result["regression"] == []


def test_grouping_auto_and_file(sample: Path, tmp_path: Path):
    js = tmp_path / "g.json"
    args = ("eval", sample, "--dataset", "digits", "--bits", "2", "--scheme", "asym", "--per-channel")
    r = _run(*args, "--json", js)
    assert r.exit_code == 0, r.output
    c = json.loads(js.read_text())["classification"]
    assert c["accuracy_quantized"] < c["accuracy_original"] - 0.05  # 2 bits confuses classes
    assert c["groups"] and c["group_source"] == "auto"
    assert c["grouped_accuracy_quantized"] >= c["accuracy_quantized"]
    assert c["grouped_accuracy_original"] >= c["accuracy_original"]
    # a user grouping is honoured: recompute its grouped accuracy from the confusion matrix
    groups = [[4, 6], [7, 8, 1]]
    gfile = tmp_path / "groups.json"
    gfile.write_text(json.dumps({"groups": groups}))
    r = _run(*args, "--groups", gfile, "--json", js)
    assert r.exit_code == 0, r.output
    c = json.loads(js.read_text())["classification"]
    assert c["groups"] == [[4, 6], [1, 7, 8]] and c["group_source"] == "file"
    cq = np.array(c["confusion_quantized"])
    right = np.trace(cq) + sum(cq[i, j] for g in groups for i in g for j in g if i != j)
    assert c["grouped_accuracy_quantized"] == pytest.approx(right / cq.sum(), abs=1e-6)


def test_auto_groups_merge_growing_confusion():
    ref = np.diag([50, 50, 50, 50])
    q = ref.copy()
    q[0, 0], q[0, 1] = 30, 20  # class 0 now taken for 1 at a 40% rate
    q[1, 1], q[1, 0] = 40, 10
    groups = auto_groups(ref, q, 0.05)
    assert groups == [[0, 1]]
    labels = np.repeat(np.arange(4), 50)
    preds = np.concatenate([[0] * 30 + [1] * 20, [1] * 40 + [0] * 10, [2] * 50, [3] * 50])
    assert grouped_accuracy(labels, preds, groups, 4) == 1.0 > float((labels == preds).mean())


@pytest.mark.parametrize("content,message", [
    ("[[0, 12]]", "out of range"), ("[[1, 2], [2, 3]]", "two groups"), ("{not json", "not a JSON"),
    ('{"groups": [[1, "a"]]}', "list of lists"),
])
def test_bad_grouping_files(sample: Path, tmp_path: Path, content: str, message: str):
    g = tmp_path / "g.json"
    g.write_text(content)
    r = _run("eval", sample, "--dataset", "digits", "--bits", "3", "--groups", g)
    assert r.exit_code == 1 and message in r.output and r.output.startswith("qpack: error:")


def test_the_bundled_digits_split_is_scikit_learns():
    """--dataset digits reads the sample's test split from qpack's own data: it must be the split
    scikit-learn draws (30% stratified, seed 0), image for image and label for label."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    _, xte, _, yte = train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=0, stratify=d.target)
    got_x, got_y = digits()
    assert got_x.dtype == np.float32 and got_y.dtype == np.int64
    assert np.array_equal(got_x, xte) and np.array_equal(got_y, yte)


def test_npz_inputs_with_labels_match_builtin(sample: Path, tmp_path: Path):
    x, y = digits()
    npz = tmp_path / "d.npz"
    np.savez(npz, image=x, labels=y)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run("eval", sample, "--inputs", npz, "--bits", "3", "--json", a).exit_code == 0
    assert _run("eval", sample, "--dataset", "digits", "--bits", "3", "--json", b).exit_code == 0
    ca, cb = json.loads(a.read_text())["classification"], json.loads(b.read_text())["classification"]
    assert ca["accuracy_quantized"] == cb["accuracy_quantized"] and ca["confusion_quantized"] == cb["confusion_quantized"]


def test_mismatched_input_shape(sample: Path, tmp_path: Path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 1, 9, 9), np.float32))
    r = _run("eval", sample, "--inputs", npy, "--bits", "8")
    assert r.exit_code == 1 and "wants" in r.output and r.output.count("\n") == 1


def test_wrong_input_names_and_choices(sample: Path, tmp_path: Path):
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.zeros((2, 1, 8, 8), np.float32), b=np.zeros((2, 1, 8, 8), np.float32))
    r = _run("eval", sample, "--inputs", npz)
    assert r.exit_code == 1 and "image" in r.output
    r = _run("eval", sample)
    assert r.exit_code == 1 and "exactly one of" in r.output
    r = _run("eval", sample, "--dataset", "mnist")
    assert r.exit_code == 1 and "unknown dataset" in r.output


def test_qpk_of_another_model_named_with_the_users_paths(sample: Path, tfl_fp16: Path, ocr_cls: Path, tmp_path: Path):
    tfl, ocr = tmp_path / "face.qpk", tmp_path / "ocr.qpk"
    for model, qpk in ((tfl_fp16, tfl), (ocr_cls, ocr)):
        assert _run("convert", model, "-o", qpk, "--compress", "none", "-q").exit_code == 0
    r = _run("eval", sample, "--dataset", "digits", "--qpk", tfl)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"--qpk {tfl} holds a tflite model (made from {tfl_fp16.name}), and {sample} is an onnx model" in r.output
    r = _run("eval", sample, "--dataset", "digits", "--qpk", ocr)  # the same format, another model
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"--qpk {ocr} was not converted from {sample} (made from {ocr_cls.name}): its tensor" in r.output
    assert "is not in the model" in r.output and "qpack-eval" not in r.output
    r = _run("unpack", ocr, "-o", tmp_path / "restored.tflite")
    assert r.exit_code == 1 and "the container holds an onnx model; name the output *.onnx" in r.output


def test_only_single_axis_outputs_count_as_class_scores():
    from qpack.converter.evaluate import _logits

    assert _logits(np.zeros((2, 10))).shape == (2, 10)
    assert _logits(np.zeros((2, 10, 1, 1))).shape == (2, 10)
    assert _logits(np.zeros((1, 896, 16))) is None  # boxes x coordinates: judged by cosine alone
    assert _logits(np.zeros((2, 1))) is None and _logits(np.zeros(5)) is None


def test_class_scores_rule():
    from qpack.converter.evaluate import class_scores
    from qpack.formats.model import Head

    x = np.random.default_rng(0).standard_normal((8, 5))
    probs = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert class_scores(x, Head.OTHER, False) is None  # a convolution's five values: a regression
    assert class_scores(x, Head.DENSE, False) is not None  # a dense layer's: logits
    assert class_scores(x, Head.OTHER, True) is not None  # labelled inputs say it classifies
    assert class_scores(probs, Head.OTHER, False) is not None and class_scores(np.log(probs), None, False) is not None
    assert class_scores(probs * 1.01, Head.OTHER, False) is None
    assert class_scores(x[:, :1], Head.SOFTMAX, True) is None  # one value per sample is never class scores


def test_sweep_of_a_detector_uses_output_fidelity(tfl_fp16: Path, photos: Path, tmp_path: Path):
    r = _run("sweep", tfl_fp16, "--images", photos, "--size", "128", "--layout", "nhwc", "--scale", "1/127.5", "--mean", "1",
             "--out", tmp_path, "--schemes", "asym", "--bits", "8,4", "--granularity", "channel", "--sensitivity-bits", "0")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert result["loss_measure"] == "100 * (1 - mean output cosine)"
    loss = {c["bits"]: c["loss_points"] for c in result["cells"]}
    assert 0 <= loss[8] < 1 < loss[4]


def test_mse_clipping_rescues_two_bit_sample(sample: Path, tmp_path: Path):
    accs = {}
    for clip in ("minmax", "mse"):
        js = tmp_path / f"{clip}.json"
        r = _run("eval", sample, "--dataset", "digits", "--bits", "2", "--scheme", "asym", "--clip", clip, "--json", js)
        assert r.exit_code == 0, r.output
        accs[clip] = json.loads(js.read_text())["classification"]["accuracy_quantized"]
    assert accs["minmax"] < 0.5 < 0.9 < accs["mse"]
