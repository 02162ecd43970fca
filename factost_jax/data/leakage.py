"""Which datasets a checkpoint's pretraining corpus held, and whether a target set overlaps it.

Both stages ask before they report a number: `launch/evaluate.py` refuses a zero-shot evaluation on
data the checkpoint was pretrained on, `launch/adapt.py` refuses to adapt to it (a few-shot result
on a set the encoder has already seen is not few-shot). Pure functions of a checkpoint's JSON
metadata (a plain dict): the data room's knowledge of dataset names and of the pretraining
config's `corpora` / `exclude` fields, nothing of checkpoints or models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Datasets recorded by the same sensors: pretraining on one leaks into results on the other.
SAME_SOURCE: tuple[tuple[str, ...], ...] = (
    ("ETTh1", "ETTm1"), ("ETTh2", "ETTm2"), ("LOS-LOOP", "METR-LA"), ("HZMETRO", "HZMETRO:out"))


def _canonical_or_none(name: str) -> str | None:
    from factost_jax.data.registry import canonical_name

    try:
        return canonical_name(name)
    except ValueError:
        return None


def same_source(name: str) -> set[str]:
    """`name` and every dataset recorded by the same sensors (canonical names)."""
    group = {name}
    for twins in SAME_SOURCE:
        if name in twins:
            group.update(twins)
    return group


def _corpus_config(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """{"corpora": [...], "exclude": [...]} of the pretraining run: copied into derived checkpoints as
    `pretrain_corpora` / `pretrain_exclude` (checkpoint.inherited_metadata), else the stage-1 run config."""
    if metadata.get("pretrain_corpora") is not None:
        return {"corpora": metadata["pretrain_corpora"], "exclude": metadata.get("pretrain_exclude") or ()}
    run_config = metadata.get("run_config")
    data = run_config.get("data") if isinstance(run_config, Mapping) else None
    return data if isinstance(data, Mapping) and "corpora" in data else None


def pretraining_corpus(metadata: Mapping[str, Any]) -> set[str] | None:
    """Canonical names of the real datasets a checkpoint was pretrained on, or None when unrecorded.

    Read from metadata["corpus"] (a list of dataset names, e.g. of a shipped checkpoint) or else from
    the pretraining data config ("corpora" and "exclude", see `_corpus_config`). The "real" component
    counts as every known dataset outside the exclusion list: the datasets present on the training
    machine are not recorded, so this errs on the side of refusing.
    """
    from factost_jax.data.registry import DATASET_INFO

    if isinstance(metadata.get("corpus"), list | tuple):
        names = (entry[0] if isinstance(entry, list | tuple) and entry else entry for entry in metadata["corpus"])
        return {canonical for name in names if isinstance(name, str) and (canonical := _canonical_or_none(name))}
    data = _corpus_config(metadata)
    if data is None:
        return None
    components = [entry[0] if isinstance(entry, list | tuple) else entry for entry in data["corpora"]]
    named = {canonical for name in components
             if isinstance(name, str) and name.lower() not in ("kernelsynth", "real")
             and (canonical := _canonical_or_none(name))}
    corpus = set(named)
    if any(isinstance(name, str) and name.lower() == "real" for name in components):
        excluded = {canonical for name in data.get("exclude") or () if (canonical := _canonical_or_none(str(name)))}
        for name in DATASET_INFO:
            if name == "SYNTHETIC" or name in named:
                continue
            if name not in excluded and name.split(":", 1)[0] not in excluded:
                corpus.add(name)
    return corpus


def pretraining_overlap(metadata: Mapping[str, Any], dataset_name: Any) -> list[str]:
    """Datasets of the checkpoint's pretraining corpus recorded by the same sensors as `dataset_name`.

    Empty when there is no overlap, when the metadata does not record the corpus, and for a user's
    file or DataFrame (corpora list registered datasets only).
    """
    from factost_jax.data.user_files import is_file_source

    corpus = pretraining_corpus(metadata)
    if not corpus or is_file_source(dataset_name) or not isinstance(dataset_name, str):
        return []
    target = _canonical_or_none(dataset_name)
    return [] if target is None else sorted(corpus & same_source(target))


def describe_overlap(overlap: list[str], dataset_name: str) -> str:
    """"ETTh1, ETTm1 (the same sensors as ETTh1)": the overlap as an error message names it."""
    target = _canonical_or_none(dataset_name) or dataset_name
    return ", ".join(name if name == target else f"{name} (the same sensors as {target})" for name in overlap)
