"""`--config configs/adapt.py:<variant>` in a source checkout: the configs live in the package
(factost_jax/configs/adapt.py, so an installed `factost-adapt` has them too); this file re-exports them."""

from factost_jax.configs.adapt import *  # noqa: F401,F403
