"""Shared fixtures: float64 on CPU, the upstream reference data, and the models.

The upstream checkpoints and reference outputs the tests use are vendored in tests/data/upstream/
(MIT, MLFF-Distiller; its LICENSE and PROVENANCE.md sit beside them): a fresh clone runs every test.
"""

from __future__ import annotations

import gc
import os
import pathlib
import re

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
if os.environ.get("MLFF_JAX_TEST_ON_DEVICE") != "1":  # float64 tests run on CPU; set to 1 to run them on a GPU
    jax.config.update("jax_platforms", "cpu")

UPSTREAM = pathlib.Path(__file__).resolve().parent / "data" / "upstream"
MODEL_NAMES = ("ultra-tiny-21k", "tiny-77k", "student-427k")


def upstream_path(*parts) -> pathlib.Path:
    """A vendored upstream file under tests/data/upstream/; a missing one fails the test (never skips)."""
    path = UPSTREAM.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"vendored upstream test data missing: {path} (see tests/data/upstream/PROVENANCE.md)")
    return path


# Import names of the packages of the `test` extra (pyproject.toml; tests/test_repository.py keeps the
# two lists equal). A test that skips because one of them cannot be imported FAILS instead: CI
# installs the extra, so a skip there would only hide a missing dependency.
TEST_EXTRA_MODULES = {
    "pytest", "hypothesis", "onnx", "optax", "tblite", "rdkit", "jax_md", "nbmake", "nbformat", "nbclient", "ipykernel", "matplotlib",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turns a skip from ``pytest.importorskip`` of a test-extra package into a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        missing = re.search(r"could not import '([\w.]+)'", str(report.longrepr[2]))
        if missing and missing.group(1).split(".")[0] in TEST_EXTRA_MODULES:
            report.outcome = "failed"
            report.longrepr = f"{report.longrepr[2]}: it belongs to the test extra (pip install -e '.[test]')"


class Reference:
    """One upstream reference file: ``ref.structures`` names, ``ref[name, "R"]`` arrays."""

    def __init__(self, path):
        self._data = np.load(path)
        self.structures = sorted({k.split("__")[0] for k in self._data.files} - {"batch"})

    def __getitem__(self, key):
        name, field = key
        return self._data[f"{name}__{field}"]


@pytest.fixture(scope="session")
def reference():
    """reference(model_name) -> Reference of upstream energies/forces."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Reference(upstream_path("reference", f"{name}.npz"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def load_model():
    """load_model(name, dtype) -> PaiNNStudent from the upstream model save (cached)."""
    import mlff_jax

    cache = {}

    def get(name="tiny-77k", dtype="float64", **kwargs):
        key = (name, dtype, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = mlff_jax.load(upstream_path("checkpoints", f"{name}.model.pt"), dtype=dtype, **kwargs)
        return cache[key]

    return get


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module.

    The whole suite compiles thousands of programs in one process (session-cached models keep
    theirs alive); with all of them resident, XLA's CPU compiler crashed (SIGSEGV) late in the suite
    on the 2-core CI machine, in a test that passes on its own.
    """
    yield
    jax.clear_caches()
    gc.collect()
