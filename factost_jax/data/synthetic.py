"""The two synthetic generators, re-exported under their historical module name.

KernelSynth lives in `kernel_synth.py`, the synthetic sensor network in `synthetic_network.py`;
the seasonal pretraining series in `seasonal_synth.py`.
"""

from factost_jax.data.kernel_synth import *  # noqa: F401,F403
from factost_jax.data.kernel_synth import _symmetric_toeplitz  # noqa: F401  (tests reach it)
from factost_jax.data.synthetic_network import *  # noqa: F401,F403
