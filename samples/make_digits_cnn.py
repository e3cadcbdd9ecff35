"""Train the bundled sample: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

Run once to regenerate samples/digits_cnn.onnx (needs torch, which qpack itself does not):
    python samples/make_digits_cnn.py
The split is fixed (seed 0, 30% test) and matches qpack's built-in `digits` dataset, so the test
accuracy printed here is the float baseline that `qpack eval` compares against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).parent


def data():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8, values in [0, 1]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=0, stratify=d.target)


def main() -> None:
    torch.manual_seed(0)
    xtr, xte, ytr, yte = data()
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _epoch in range(30):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    out = HERE / "digits_cnn.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(out), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    (HERE / "digits_cnn.json").write_text(json.dumps({
        "model": out.name, "dataset": "sklearn.datasets.load_digits, images/16, 30% stratified test split, seed 0",
        "test_samples": int(len(yte)), "test_accuracy": round(acc, 4),
        "params": int(sum(p.numel() for p in model.parameters())),
    }, indent=2) + "\n")
    print(f"test accuracy {acc:.4f} on {len(yte)} digits -> {out}")


if __name__ == "__main__":
    main()
