"""Distribution: the packaged configs behind `--config`, the entry points, the wheel's contents."""

import pathlib

import pytest

from factost_jax import cli


def test_missing_config_file_falls_back_to_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: an installed user's working directory
    packaged = cli.PACKAGED_CONFIGS / "adapt.py"
    assert cli.packaged_config_argv(["prog", "--config", "configs/adapt.py:hzmetro", "--workdir", "w"]) == [
        "prog", "--config", f"{packaged}:hzmetro", "--workdir", "w"]
    assert cli.packaged_config_argv(["prog", "--config=adapt:hzmetro"]) == ["prog", f"--config={packaged}:hzmetro"]
    assert cli.packaged_config_argv(["prog", "--config", "pretrain.py"]) == [
        "prog", "--config", str(cli.PACKAGED_CONFIGS / "pretrain.py")]
    # A user's own existing file wins; an empty or missing value is left for the flag parser to report.
    own = tmp_path / "adapt.py"
    own.write_text("")
    assert cli.packaged_config_argv(["prog", "--config", "adapt.py:x"]) == ["prog", "--config", "adapt.py:x"]
    assert cli.packaged_config_argv(["prog", "--config", ""]) == ["prog", "--config", ""]
    assert cli.packaged_config_argv(["prog", "--config"]) == ["prog", "--config"]


def test_unknown_config_file_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for value in ("nope.py:x", "__init__.py"):
        with pytest.raises(SystemExit) as exit_info:
            cli.packaged_config_argv(["prog", f"--config={value}"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (f"error: --config {value}: no such file, and not a packaged config "
                                           "(those are adapt.py, pretrain.py)\n")


def test_checkout_shims_re_export_the_packaged_configs(repo_root):
    import importlib.util

    from factost_jax.configs import adapt, pretrain

    for name, module in (("pretrain", pretrain), ("adapt", adapt)):
        spec = importlib.util.spec_from_file_location(f"shim_{name}", repo_root / "configs" / f"{name}.py")
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        assert shim.get_config is module.get_config and shim.VARIANTS == module.VARIANTS
    assert pathlib.Path(cli.PACKAGED_CONFIGS, "pretrain.py").is_file()


def test_the_running_interpreter_is_a_stated_supported_python(repo_root):
    import sys
    import tomllib

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"Programming Language :: Python :: {version}" in project["classifiers"], version
    assert version in SpecifierSet(project["requires-python"])
