"""The PyTorch reference of benchmarks/ computes what the JAX Encoder computes (so speed compares equal work)."""

import functools
import os
import sys

import jax
import numpy as np
import pytest

from factost_jax.model import encoder as enc
from factost_jax.metrics import pinball_loss
from factost_jax.model.config import model_config

if os.environ.get("CI"):
    import torch  # `make test` installs it (Makefile): under CI a missing torch fails, never skips
else:
    torch = pytest.importorskip("torch", reason="torch is not installed; `make test` installs the CPU build")

from conftest import REPO_ROOT  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from benchmarks import reference_torch as ref  # noqa: E402

SPEC_PARAM_COUNTS = {"minuscule": 2_510_192, "tiny": 4_378_928, "small": 12_172_336, "base": 30_387_632}


@functools.lru_cache(maxsize=4)
def _init(config, seed: int = 3):
    """Plain JAX params, shared between tests; init under jit (op-by-op init is several times slower)."""
    return enc.unbox(jax.jit(lambda key: enc.init_params(config, key))(jax.random.key(seed)))


def _ragged_context(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Level + trend + noise with scattered NaNs, left padding of varying length and one all-padding row.

    Returns context [B, L] (NaN where missing) and an explicit mask [B, L] that also hides a few finite values.
    """
    time = np.arange(length, dtype=np.float32)
    level = rng.uniform(-50.0, 50.0, (batch, 1)).astype(np.float32)
    context = level + 0.1 * time + rng.standard_normal((batch, length)).astype(np.float32) * 3.0
    context[rng.random((batch, length)) < 0.15] = np.nan
    for row, pad in enumerate(rng.integers(0, length - 5, batch)):
        context[row, :pad] = np.nan
    context[-1, :] = np.nan  # nothing observed: loc 0, scale 1, every context patch padded
    mask = np.isfinite(context) & (rng.random((batch, length)) > 0.05)
    return context.astype(np.float32), mask


@pytest.mark.parametrize("size", sorted(SPEC_PARAM_COUNTS))
def test_param_count_matches_spec_and_jax(size):
    config = model_config(size)
    torch_model = ref.TorchEncoder(config)
    assert ref.count_parameters(torch_model) == SPEC_PARAM_COUNTS[size]
    assert enc.count_params(enc.abstract_params(config)) == SPEC_PARAM_COUNTS[size]


@pytest.mark.parametrize(
    "size, length, num_output_patches",
    [("debug", 100, 3), ("debug", 200, 4), ("tiny", 300, 16)],  # 200 > debug's 128-step context: truncated
)
def test_torch_reference_matches_jax_encoder(size, length, num_output_patches):
    config = model_config(size)
    params = _init(config)
    torch_model = ref.load_jax_params(ref.TorchEncoder(config), params).eval()
    context, mask = _ragged_context(np.random.default_rng(7), batch=5, length=length)

    expected = np.asarray(enc.predict(params, config, context, mask, num_output_patches))
    with torch.no_grad():
        actual = torch_model(torch.from_numpy(context), torch.from_numpy(mask), num_output_patches).numpy()

    assert actual.shape == (5, num_output_patches * config.patch_size, config.num_quantiles)
    assert np.all(np.isfinite(actual))
    scale = np.max(np.abs(expected), axis=(1, 2), keepdims=True)  # rows differ in level by up to ~50
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=1e-4, atol=1e-4)


def test_fully_padded_queries_are_zero_not_nan():
    config = model_config("debug")
    torch_model = ref.TorchEncoder(config).eval()
    attention = torch_model.layers[0].attn
    x = torch.randn(2, 6, config.d_model)
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    cos, sin = torch_model.rope_cos[:6], torch_model.rope_sin[:6]
    with torch.no_grad():
        out = attention(x, valid, cos, sin)
    assert torch.all(out[0, :2] == 0)
    assert torch.all(torch.isfinite(out))


def test_load_rejects_mismatched_params():
    params = _init(model_config("debug"))
    wider = ref.TorchEncoder(model_config("debug", d_model=64))
    with pytest.raises(ValueError, match="load_jax_params: .* has JAX shape"):
        ref.load_jax_params(wider, params)
    params_with_extra = dict(params, extra={"kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="scalars"):
        ref.load_jax_params(ref.TorchEncoder(model_config("debug")), params_with_extra)


def test_pinball_loss_matches_definition():
    levels = torch.tensor([0.1, 0.5, 0.9])
    quantiles = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]])  # [1, 2, 3]
    target = torch.tensor([[1.0, float("nan")]])
    mask = torch.tensor([[True, True]])
    # only the first point counts: errors y - yhat = (1, 0, -1)
    expected = (0.1 * 1 + 0.0 + (0.9 - 1.0) * -1.0) / 3
    assert ref.pinball_loss(quantiles, target, levels, mask).item() == pytest.approx(expected)


def test_gradients_match_jax():
    """The backward pass is equal work too: same pinball-loss gradients for every parameter."""
    config = model_config("debug")
    params = _init(config)
    context, mask = _ragged_context(np.random.default_rng(2), batch=4, length=90)
    rng = np.random.default_rng(3)
    target = rng.standard_normal((4, 2 * config.patch_size)).astype(np.float32) * 20.0
    target_mask = rng.random(target.shape) > 0.2
    levels = np.asarray(config.quantile_levels, np.float32)

    @jax.jit
    def jax_loss(p):
        quantiles = enc.Encoder(config).apply({"params": p}, context, mask, 2, True)
        return pinball_loss(quantiles, target, levels, target_mask)

    jax_grads = ref.jax_to_torch_state(jax.jit(jax.grad(jax_loss))(params), config)
    torch_model = ref.load_jax_params(ref.TorchEncoder(config), params).eval()
    loss = ref.pinball_loss(
        torch_model(torch.from_numpy(context), torch.from_numpy(mask), 2),
        torch.from_numpy(target),
        torch.from_numpy(levels),
        torch.from_numpy(target_mask),
    )
    loss.backward()
    assert loss.item() == pytest.approx(float(jax_loss(params)), rel=1e-5)
    for name, parameter in torch_model.named_parameters():
        expected = jax_grads[name].numpy()
        scale = max(float(np.abs(expected).max()), 1e-6)
        np.testing.assert_allclose(parameter.grad.numpy() / scale, expected / scale, atol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------- benchmark helpers

from benchmarks import common, run  # noqa: E402


@pytest.mark.parametrize("size", ["debug", "tiny"])
def test_flop_count_matches_the_torch_layers(size):
    """Dense FLOPs = 2 x weights each token passes through, plus the two attention products."""
    config = model_config(size)
    model = ref.TorchEncoder(config)
    context, patches = 100, 3
    tokens = common.num_tokens(config, context, patches)
    assert tokens == -(-min(context, config.max_context_length) // 16) + 1 + patches

    def weights(module):
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    layer = weights(model.layers[0])
    attention = 4 * tokens * tokens * config.d_model
    expected = 2 * ((tokens - 1) * weights(model.token_embed) + tokens * layer * config.num_layers)
    expected += 2 * patches * weights(model.head) + config.num_layers * attention
    assert common.forward_flops_per_window(config, context, patches) == expected
    train = common.flops_per_window(config, common.Workload("train", 4, context, patches))
    assert train == 3 * expected


def test_synthetic_batch_shapes_and_prefix_masking():
    batch = common.synthetic_batch(common.Workload("train", 6, 300, 2), seed=1)
    assert batch["context"].shape == (6, 300) and batch["target"].shape == (6, 32)
    assert np.array_equal(batch["context_mask"], np.isfinite(batch["context"]))
    mask = batch["context_mask"]
    assert mask[:, -48:].mean(axis=1).min() > 0.8  # the last 48 steps are never prefix-masked (2 % gaps aside)
    first_observed = mask.argmax(axis=1)
    assert len(np.unique(first_observed)) > 3  # prefixes of different lengths are masked
    with pytest.raises(ValueError, match="phase"):
        common.Workload("predict", 1, 1, 1)


def test_worker_env_applies_settings_and_drops_simulated_devices():
    base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "GLIBC_TUNABLES": "x"}
    env = common.worker_env({"glibc": True, "omp_passive": True}, base)
    assert env["XLA_FLAGS"] == "--xla_foo=1"
    assert env["GLIBC_TUNABLES"] == common.GLIBC_TUNABLES_BEST and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = common.worker_env({"glibc": False}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert "XLA_FLAGS" not in env and "GLIBC_TUNABLES" not in env and "OMP_WAIT_POLICY" not in env


def test_jax_variants_are_known_and_reject_typos():
    assert common.jax_variant("default") == {"compiler_options": {}, "prng_impl": None, "unroll": None}
    assert common.jax_variant("scan")["unroll"] is False
    assert common.jax_variant("ynn_dot_rbg")["prng_impl"] == "rbg"
    with pytest.raises(ValueError, match="unknown JAX variant 'ynn_fast'"):
        common.jax_variant("ynn_fast")
    for phase_variants in run.JAX_VARIANTS_BY_PHASE.values():
        assert set(phase_variants) <= set(common.JAX_VARIANTS)
    assert {settings["jax_variant"] for settings in run.BEST_SETTINGS.values()} <= set(common.JAX_VARIANTS)


def test_speed_row_ratios_and_recorded_failures():
    spec = {"model": "tiny", "phase": "train", "batch": 64, "context": 2048, "output_patches": 16, "dtype": "auto"}

    def result(per_s, gflops):
        return {"per_s": per_s, "tokens": 145, "flops_per_window": 1, "device": "cpu", "dtype": "float32",
                "tokens_per_s": per_s * 145, "compile_s": 3.0, "gflops_per_s": gflops, "step_s": [1.0]}

    worker = {"results": {"jax": result(30.0, 100.0), "torch_eager": result(20.0, 80.0),
                          "torch_compile": {"error": "BackendCompilerFailed: no compiler"}}}
    memory = {"jax": {"peak_mem_mb": 512.0}, "torch_eager": {"error": "killed"}}
    row = run.make_row(spec, list(run.MODEL_FRAMEWORKS), worker, memory, {}, 200.0, (1.0, 2.0))
    assert row["jax_vs_torch_eager"] == pytest.approx(1.5)
    assert row["torch_compile_per_s"] is None and row["jax_vs_torch_compile"] is None
    assert row["torch_compile_error"].startswith("BackendCompilerFailed")
    assert row["jax_frac_of_matmul_roof"] == pytest.approx(0.5)
    assert row["jax_peak_mem_mb"] == 512.0 and row["torch_eager_peak_mem_error"] == "killed"
    assert {"model", "phase", "device", "batch", "context", "jax_per_s", "torch_eager_per_s"} <= set(row)
