"""The repository stands on its own: vendored fixtures intact, every test dependency in the `test`
extra, no test skipping for a missing one, and user docs free of internal references."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import TEST_EXTRA_MODULES, UPSTREAM

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_VENDORED_BYTES = 6_000_000  # "a few MB": the fixtures travel with every clone
# distribution name in pyproject.toml -> the module the tests import
IMPORT_NAME = {"jax-md": "jax_md"}


def _recorded_checksums() -> dict[str, str]:
    text = (UPSTREAM / "PROVENANCE.md").read_text()
    block = text.split("## Checksums (sha256)", 1)[1]
    return {path: digest for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", block, re.MULTILINE)}


def test_vendored_upstream_fixtures_match_their_recorded_checksums():
    recorded = _recorded_checksums()
    data_files = {str(p.relative_to(UPSTREAM)) for p in UPSTREAM.rglob("*") if p.is_file() and p.suffix not in (".md", "")}
    assert data_files == set(recorded), "every vendored data file is listed in PROVENANCE.md, and only those"
    for path, digest in recorded.items():
        assert hashlib.sha256((UPSTREAM / path).read_bytes()).hexdigest() == digest, path


def test_vendored_fixtures_stay_small_and_carry_the_upstream_licence():
    total = sum(p.stat().st_size for p in UPSTREAM.rglob("*") if p.is_file())
    assert total <= MAX_VENDORED_BYTES
    licence = (UPSTREAM / "LICENSE").read_text()
    assert "MIT License" in licence and "ML Force Field Distillation Team" in licence and "MLFF-Distiller" in licence


def test_trainer_fixture_keeps_the_trainer_layout_without_optimizer_state():
    with zipfile.ZipFile(UPSTREAM / "checkpoints" / "student-427k.best_model.pt") as archive:
        (pickle_name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        pickled = archive.read(pickle_name)
    for kept in (b"epoch", b"global_step", b"best_val_loss", b"training_history", b"model_state_dict", b"PosixPath"):
        assert kept in pickled, kept
    assert b"optimizer_state_dict" not in pickled


def _test_extra() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in project["optional-dependencies"]["test"]]


def test_test_extra_lists_exactly_the_packages_the_tests_require():
    modules = {IMPORT_NAME.get(name, name) for name in _test_extra()}
    assert modules == TEST_EXTRA_MODULES


@pytest.mark.parametrize("module", sorted(TEST_EXTRA_MODULES))
def test_every_test_extra_package_is_importable(module):
    __import__(module)  # fails (never skips) in an environment without the test extra


def test_a_missing_test_dependency_fails_instead_of_skipping(tmp_path):
    shutil.copy(pathlib.Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_needs_a_package.py").write_text(
        "import pytest\n\n"
        "def test_needs_rdkit_part():\n"
        "    pytest.importorskip('rdkit.no_such_submodule')\n\n"
        "def test_needs_an_optional_package():\n"
        "    pytest.importorskip('no_such_optional_package')\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfs", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert "1 failed, 1 skipped" in run.stdout, run.stdout + run.stderr
    assert "test extra" in run.stdout


USER_DOCS = ["README.md", "weights/README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))),
             *(f"notebooks/{p.name}" for p in sorted((ROOT / "notebooks").glob("*.ipynb")))]
INTERNAL_REFERENCE = re.compile(r"(?<![\w&/])#\d+\b|\bissues? \d+|shared/|(?<!\w)\.device\b|MLFF_JAX_UPSTREAM", re.IGNORECASE)


@pytest.mark.parametrize("doc", USER_DOCS)
def test_user_docs_carry_no_internal_references(doc):
    lines = (ROOT / doc).read_text().splitlines()
    found = [f"{doc}:{i}: {line.strip()[:120]}" for i, line in enumerate(lines, 1) if INTERNAL_REFERENCE.search(line)]
    assert not found, "\n".join(found)
