"""Where the datasets live: the data directory (`$FACTOST_DATA_DIR`, `../shared/data`), each dataset's
folder in it, and which datasets are present."""

from __future__ import annotations

import os
import pathlib

from factost_jax.data.registry import DATASET_INFO, DatasetInfo, PathLike, name_key


def default_data_dir() -> pathlib.Path:
    """`$FACTOST_DATA_DIR`, else `../shared/data` from the working directory if it exists, else next to the repo."""
    env = os.environ.get("FACTOST_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    from_cwd = pathlib.Path.cwd() / ".." / "shared" / "data"
    if from_cwd.is_dir():
        return from_cwd.resolve()
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "data").resolve()


def resolve_data_dir(data_dir: PathLike | None) -> pathlib.Path:
    root = default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} not found (pass data_dir or set FACTOST_DATA_DIR)")
    return root


def find_folder(root: pathlib.Path, folder: str) -> pathlib.Path | None:
    """`root/folder`, also matching a folder whose name differs only in case or '-'/'_'."""
    exact = root / folder
    if exact.is_dir():
        return exact
    key = name_key(folder)
    for child in sorted(root.iterdir()):
        if child.is_dir() and name_key(child.name) == key:
            return child
    return None


def _files_present(folder: pathlib.Path, info: DatasetInfo) -> bool:
    return all(any((folder / alt).is_file() for alt in spec.split("|")) for spec in info.files)


def list_datasets(data_dir: PathLike | None = None) -> list[str]:
    """Canonical names (in `DATASET_INFO` order) of the datasets whose files are all present in `data_dir`.

    SYNTHETIC needs no files and is never listed (it is always loadable); a missing data directory gives [].
    """
    root = default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        return []
    names = []
    for info in DATASET_INFO.values():
        if info.folder is None:
            continue
        folder = find_folder(root, info.folder)
        if folder is not None and _files_present(folder, info):
            names.append(info.name)
    return names


