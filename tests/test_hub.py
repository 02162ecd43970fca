"""Hugging Face Hub layout (factost_jax/hub.py): save_pretrained -> from_pretrained bitwise, a Hub
repository read from a prepared HF cache through the real `snapshot_download` with offline mode on,
push_to_hub's upload, the model card, and the errors. No network."""

import json
import shutil

import jax
import numpy as np
import pytest

from factost_jax import Forecaster, hub
from factost_jax.model.config import model_config
from factost_jax.model.encoder import abstract_params, host_random_params, unbox

CONFIG = model_config("debug")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SERIES = [np.sin(np.arange(100) / 4.0) * 5 + 20, np.linspace(0, 3, 70)]


@pytest.fixture(scope="module")
def shipped():
    return Forecaster.load("factost-tiny")


def assert_same_params(a, b):
    flat_a, flat_b = hub.flatten_params(a.params), hub.flatten_params(b.params)
    assert sorted(flat_a) == sorted(flat_b)
    for key, value in flat_a.items():
        assert flat_b[key].dtype == value.dtype and np.array_equal(flat_b[key], value), key
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)


def test_save_pretrained_round_trips_bitwise(shipped, tmp_path):
    directory = shipped.save_pretrained(tmp_path / "tiny")  # stored bf16, as the Orbax checkpoint
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (directory / "model.safetensors").stat().st_size < 9_000_000  # 4.4M params x 2 bytes + header
    loaded = Forecaster.from_pretrained(directory)
    assert_same_params(shipped, loaded)
    assert loaded.config == shipped.config and loaded.metadata["corpus"] == shipped.metadata["corpus"]
    assert loaded.metadata["pretrain_context_length"] == 2048 and loaded.max_context == shipped.max_context == 2048
    np.testing.assert_array_equal(loaded.forecast(SERIES, 24).quantiles, shipped.forecast(SERIES, 24).quantiles)
    # Random float32 weights (not bf16-representable) round-trip bitwise when stored as float32.
    params = host_random_params(unbox(abstract_params(CONFIG)), seed=3, std=0.3)
    fresh = Forecaster(params, CONFIG, metadata={"step": 5})
    assert_same_params(fresh, Forecaster.from_pretrained(fresh.save_pretrained(tmp_path / "f32")))
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["params_dtype"] == "float32"


def test_stage2_round_trip_keeps_the_adapter(tmp_path):
    from factost_jax.model.adapter import AdapterConfig, init_adapter_params

    adapter_config = AdapterConfig(num_nodes=3)
    shapes = unbox(jax.eval_shape(lambda key: init_adapter_params(CONFIG, adapter_config, key), jax.random.key(1)))
    params = {**host_random_params(unbox(abstract_params(CONFIG))), "adapter": host_random_params(shapes["adapter"])}
    adapted = Forecaster(params, CONFIG, adapter_config=adapter_config)
    loaded = Forecaster.from_pretrained(adapted.save_pretrained(tmp_path / "adapted"))
    assert loaded.stage == 2 and loaded.adapter_config == adapter_config
    assert_same_params(adapted, loaded)


def _hub_cache(root, repo_id, files):
    """The HF cache layout a download leaves: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    storage = root / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files, storage / "snapshots" / COMMIT)
    return root


def test_from_pretrained_reads_a_hub_repo_offline_through_snapshot_download(shipped, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import; the env var alone is too late
    cache = _hub_cache(tmp_path / "hf", "factost/factost-tiny", shipped.save_pretrained(tmp_path / "files"))
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    for revision in (None, COMMIT):
        loaded = Forecaster.from_pretrained("factost/factost-tiny", revision=revision, cache_dir=cache)
        assert loaded.path == cache / "models--factost--factost-tiny" / "snapshots" / COMMIT
        assert_same_params(shipped, loaded)
    assert [c[0] for c in calls] == [("factost/factost-tiny",)] * 2
    with pytest.raises(FileNotFoundError, match=r"^from_pretrained: Hub repository factost/factost-tiny at revision "
                                                r"v2 not available \(.*outgoing traffic has been disabled"):
        Forecaster.from_pretrained("factost/factost-tiny", revision="v2", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="Hub repository someone/else not available"):
        Forecaster.from_pretrained("someone/else", cache_dir=cache)


def test_push_to_hub_uploads_the_pretrained_files_in_one_commit(shipped):
    class RecordingApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            folder = kwargs["folder_path"]
            files = {p.name: p.read_bytes() for p in sorted(__import__("pathlib").Path(folder).iterdir())}
            self.calls.append(("upload_folder", kwargs["repo_id"], sorted(files)))
            self.card = files["README.md"].decode()
            return type("CommitInfo", (), {"commit_url": "https://hub.example/org/tiny/commit/abc"})()

    api = RecordingApi()
    url = shipped.push_to_hub("org/tiny", api=api, private=True,
                              metrics={"ETTh2 96->96 zero-shot": {"MAE": 0.5, "RMSE": 0.75}})
    assert url == "https://hub.example/org/tiny/commit/abc"
    assert api.calls == [("create_repo", "org/tiny", {"repo_type": "model", "private": True, "exist_ok": True}),
                         ("upload_folder", "org/tiny", ["README.md", "config.json", "model.safetensors"])]
    assert "Forecaster.from_pretrained('org/tiny')" in api.card and "| ETTh2 96->96 zero-shot | 0.5 | 0.75 |" in api.card
    with pytest.raises(ValueError, match="is not a Hub repository id"):
        shipped.push_to_hub("not a repo", api=api)


def test_model_card_states_sizes_corpus_and_license(shipped, tmp_path):
    card = (shipped.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: factost-jax\npipeline_tag: time-series-forecasting\n")
    assert "| parameters | 4,378,928 |" in card and "| d_model / FFN / layers / heads | 256 / 1024 / 3 / 4 |" in card
    assert "kernelsynth, seasonal, ETTh1, ETTm1, EXCHANGE_RATE, ILLNESS, M4:hourly, M4:weekly, MONTEVIDEO_BUS, " \
        "NYCBIKE1." in card
    assert "| weights dtype | bfloat16 |" in card and "| training step | 2000 |" in card
    assert "| pretrained on contexts up to | 2048 steps (forecasts use at most this by default) |" in card


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not a pretrained directory .missing config.json; expected"):
        Forecaster.from_pretrained(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="neither a directory nor a Hub repository id"):
        Forecaster.from_pretrained("a/b/c")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json: unreadable JSON"):
        Forecaster.from_pretrained(tmp_path / "bad")
    fc = Forecaster(host_random_params(unbox(abstract_params(CONFIG))), CONFIG)
    with pytest.raises(ValueError, match="dtype must be one of"):
        fc.save_pretrained(tmp_path / "x", dtype="float16")
