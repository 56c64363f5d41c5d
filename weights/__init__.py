"""Models bundled with mlff-jax (installed as ``mlff_jax.weights``): ``mlff_jax.load("default")``."""
