"""mlff-jax: PaiNN student force fields (MLFF-Distiller) in JAX.

    import mlff_jax
    model = mlff_jax.load("student.model.pt")            # any upstream layout, ONNX, or ours
    energy, forces = model.energy_and_forces(positions, atomic_numbers)
    mlff_jax.save(model, "student.safetensors")
"""

from mlff_jax.api import load, save
from mlff_jax.config import PaiNNConfig
from mlff_jax.model import PaiNNStudent

__all__ = ["load", "save", "PaiNNConfig", "PaiNNStudent", "MLFFCalculator"]
__version__ = "0.1.0"


def __getattr__(name):  # userland: the ASE calculator is imported on first use (keeps `import mlff_jax` light)
    if name == "MLFFCalculator":
        from mlff_jax.calculator import MLFFCalculator

        return MLFFCalculator
    raise AttributeError(f"module 'mlff_jax' has no attribute {name!r}")
