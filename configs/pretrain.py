"""`--config configs/pretrain.py:<variant>` in a source checkout: the configs live in the package
(factost_jax/configs/pretrain.py, so an installed `factost-pretrain` has them too); this file re-exports them."""

from factost_jax.configs.pretrain import *  # noqa: F401,F403
