"""The run configs (ml_collections `get_config(arg)` files), shipped in the package so the installed
`factost-pretrain` / `factost-adapt` find them: `--config pretrain.py:tiny`. In a checkout,
`configs/pretrain.py` and `configs/adapt.py` re-export these modules."""
