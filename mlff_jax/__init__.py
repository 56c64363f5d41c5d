"""mlff-jax: PaiNN student force fields (MLFF-Distiller) in JAX.

    import mlff_jax
    model = mlff_jax.load("student.model.pt")            # any upstream layout, ONNX, or ours
    energy, forces = model.energy_and_forces(positions, atomic_numbers)
    mlff_jax.save(model, "student.safetensors")
"""

# --- kernels/ as mlff_jax.kernels in a source checkout (begin) ---
# kernels/ (one folder per GPU kernel) is installed as ``mlff_jax.kernels`` by the package-dir
# mapping in pyproject.toml. Run from a source tree (PYTHONPATH=repo), that subpackage does not
# exist under mlff_jax/, so register the repository's kernels/ under the same name.
def _register_source_kernels() -> None:
    import importlib.util
    import pathlib
    import sys

    here = pathlib.Path(__file__).resolve().parent
    source = here.parent / "kernels"
    if "mlff_jax.kernels" in sys.modules or (here / "kernels").exists() or not (source / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location("mlff_jax.kernels", source / "__init__.py", submodule_search_locations=[str(source)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlff_jax.kernels"] = module
    spec.loader.exec_module(module)


_register_source_kernels()
# --- kernels/ as mlff_jax.kernels in a source checkout (end) ---

from mlff_jax.api import load, save
from mlff_jax.config import PaiNNConfig
from mlff_jax.model import PaiNNStudent

__all__ = ["load", "save", "PaiNNConfig", "PaiNNStudent"]
__version__ = "0.1.0"
