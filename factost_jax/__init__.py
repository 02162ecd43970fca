"""factost-jax: FactoST-v2 spatio-temporal foundation model in JAX/Flax."""

__version__ = "0.1.0"
