"""The distribution: one import name, `qpack`, and nothing generic beside it in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds
    src = out / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv", ".hypothesis", "*.qpk"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0 and "Could not find a version that satisfies the requirement setuptools" in p.stderr:
        pytest.skip("no package index to build the wheel with")
    assert p.returncode == 0, p.stderr
    (found,) = out.glob("qpack-*.whl")
    return found


def test_wheel_installs_only_qpack(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/", 1)[0] for n in z.namelist()}
        names = set(z.namelist())
    assert tops == {"qpack", next(t for t in tops if t.endswith(".dist-info"))}
    # the package data a user's firmware and evaluations need travel with the code
    assert {"qpack/py.typed", "qpack/converter/export/qpk.h", "qpack/converter/data/digits_test.npz"} <= names


def test_installed_wheel_imports_as_qpack(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert not (target / "converter").exists() and not (target / "formats").exists()
    code = ("import importlib.util, qpack, qpack.converter.cli; print(qpack.__file__); "
            "print(importlib.util.find_spec('converter'), importlib.util.find_spec('formats'))")
    # run outside the source tree, with the installed copy first on the path
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 0, p.stderr
    where, specs = p.stdout.splitlines()
    assert Path(where).is_relative_to(target)
    assert specs == "None None"
