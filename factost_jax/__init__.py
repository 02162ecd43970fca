"""factost-jax: FactoST-v2 spatio-temporal foundation model in JAX/Flax.

`from factost_jax import Forecaster` is the entry point for forecasting; it is imported lazily so
that `import factost_jax.data...` does not start JAX.
"""

__version__ = "0.1.0"

__all__ = ["Forecaster", "QuantileForecast", "__version__"]

_LAZY = {"Forecaster": "factost_jax.forecast", "QuantileForecast": "factost_jax.forecast"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'factost_jax' has no attribute {name!r}")
