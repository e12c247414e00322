"""The installed package is the runtime: the wheel holds bot/ and models/ with their weights and
samples, and none of research/ (training, evaluation, data builders, benchmarks, run records)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("bot", "models")
RUNTIME_ARTEFACTS = ("models/restore/weights/deblur.safetensors", "models/handwriting/weights/handwriting.safetensors",
                     "models/handwriting/weights/reference.npz")


def checkout_files() -> list[str]:
    """What a clean clone of this checkout holds: git's tracked and not-ignored files (so no earlier
    build's leftovers, such as build/ or *.egg-info, can reach the wheel)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[set[str], list[str]]:
    """(the wheel's file names, the checkout's file names), the wheel built offline from a copy of the checkout."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    files = checkout_files()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-q", "-w", str(out), str(source)], check=True, timeout=600)
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as archive:
        return set(archive.namelist()), files


def test_the_wheel_holds_no_research_code_and_no_run_records(wheel):
    names, checkout = wheel
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == set(RUNTIME)
    assert not [n for n in names if n.startswith(("research/", "tests/"))]
    records = [n for n in names if "runs" in PurePosixPath(n).parts
               or PurePosixPath(n).name in ("training.json", "sample_sheet.png")
               or PurePosixPath(n).name.startswith("loss_curve")]
    assert records == []
    research = [n for n in checkout if n.startswith("research/") and n.endswith(".py")]
    assert "research/restore/train.py" in research and "research/handwriting/train.py" in research
    # no research module left behind under models/ either (e.g. models/restore/train.py)
    shadowed = {"models/" + n.removeprefix("research/") for n in research if not n.endswith("__init__.py")}
    assert shadowed.isdisjoint(names)


def test_the_wheel_holds_the_whole_runtime_its_weights_and_samples(wheel):
    names, checkout = wheel
    modules = {n for n in checkout if n.startswith(tuple(f"{r}/" for r in RUNTIME)) and n.endswith(".py")}
    assert modules and modules <= names
    samples = {n for n in checkout if n.startswith("models/samples/") and n.endswith(".jpg")}
    assert samples and samples <= names
    assert set(RUNTIME_ARTEFACTS) <= names


def test_runtime_modules_never_import_research():
    importers = []
    for package in RUNTIME:
        for file in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                else:
                    continue
                importers += [f"{file.relative_to(ROOT)}:{node.lineno}" for t in targets
                              if t == "research" or t.startswith("research.")]
    assert importers == []
