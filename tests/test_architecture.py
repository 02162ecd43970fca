"""The package's floors (docs/architecture.md): every import, at module level or inside a function,
runs downward or stays in its own room; a new module must be given a floor here."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "factost_jax"

# room (a module or a subpackage of factost_jax) -> floor. A module may import its own room and any
# room on a LOWER floor; rooms on the same floor know nothing of each other.
FLOORS: dict[str, int] = {
    "trees": 0,  # pytree helpers: the basement
    "fields": 0,  # dataclass configs from user mappings: the basement
    "model": 1, "data": 1, "metrics": 1, "inputs": 1,
    "checkpoint": 2, "scoring": 2,
    "train": 3,
    # The Forecaster stands on training: Forecaster.fit (fit.py) runs a stage-2 adaptation. plots.py
    # imports nothing of the package, so it shares the floor without knowing the Forecaster.
    "forecast": 4, "plots": 4,
    "eval": 5,
    "cli": 6, "configs": 6,  # the launchers' shared start-up and the ml_collections configs
    "commands": 7,  # the entry points' mains (factost-pretrain, -adapt, -evaluate, -forecast)
}
# Modules that share a room with another: the Hub round trip is the Forecaster's own I/O (each
# calls the other: Forecaster.from_pretrained -> hub, hub -> Forecaster); fit.py is Forecaster.fit /
# save, series_frames.py and network_frames.py forecast_df's frames (stage 1, stage 2), network_inputs.py
# a stage-2 forecast's windows.
SAME_ROOM: dict[str, str] = {"hub": "forecast", "network_frames": "forecast", "fit": "forecast",
                             "series_frames": "forecast", "network_inputs": "forecast"}


def _room(module: str) -> str:
    """"factost_jax.train.loop" -> "train"; the package itself ("factost_jax") -> ""."""
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    return SAME_ROOM.get(room, room)


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported factost_jax module) of every import in the file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("factost_jax")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("factost_jax"):
            # `from factost_jax import checkpoint` imports the room "checkpoint", not the package.
            found += [(node.lineno, f"{node.module}.{alias.name}" if node.module == "factost_jax" else node.module)
                      for alias in node.names]
    return sorted(set(found))


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(PACKAGE.parent)) if path.is_relative_to(PACKAGE.parent) else str(path)


def upward_imports(modules: dict[str, pathlib.Path]) -> list[str]:
    """One line per import that runs upward or sideways between rooms, naming file, line and rooms."""
    problems = []
    for module, path in modules.items():
        room = _room(module)
        if room == "":
            continue  # factost_jax/__init__.py: lazy attribute access only, checked below
        for line, target in _imports(path):
            target_room = _room(target)
            if target_room in ("", room) or target_room not in FLOORS:
                continue
            if FLOORS[target_room] >= FLOORS[room]:
                problems.append(f"{_shown(path)}:{line}: {room} (floor {FLOORS[room]}) imports "
                                f"{target} ({target_room}, floor {FLOORS[target_room]})")
    return problems


def test_every_room_has_a_floor():
    rooms = {_room(module) for module in _modules()} - {""}
    missing = sorted(rooms - set(FLOORS))
    assert not missing, f"give these modules a floor in tests/test_architecture.py::FLOORS: {missing}"


def test_no_import_runs_upward_or_sideways():
    problems = upward_imports(_modules())
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_upward_import(tmp_path):
    """The walker itself: an import of eval/ from model/ (floor 5 from floor 1) and a lazy one inside a
    function are both reported; a downward one is not."""
    model = tmp_path / "encoder.py"
    model.write_text("from factost_jax.metrics import pinball_loss\n"
                     "from factost_jax import checkpoint\n"
                     "def f():\n    from factost_jax.eval.evaluate import evaluate\n")
    trees = tmp_path / "trees.py"
    trees.write_text("import factost_jax.model.config\n")
    problems = upward_imports({"factost_jax.model.encoder": model, "factost_jax.trees": trees})
    assert len(problems) == 4, problems  # model->metrics (same floor), model->checkpoint, model->eval, trees->model
    assert any(":4: model (floor 1) imports factost_jax.eval.evaluate" in p for p in problems)


@pytest.mark.parametrize("name", ["Forecaster", "QuantileForecast"])
def test_public_entry_point_still_imports(name):
    import factost_jax

    assert getattr(factost_jax, name).__module__ == "factost_jax.forecast"
