"""What stage 2 refuses about its `init_from` checkpoint, before anything is trained.

- A context (`input_len`) longer than the backbone was pretrained on: the encoder degrades past its
  trained length (issue 13), so adapting on such windows starts from a model outside its training
  distribution. `--config.allow_longer_context=True` turns the error into a warning.
- A target dataset the backbone's pretraining corpus held (or the same sensors recorded at another
  rate, `data/leakage.py::SAME_SOURCE`): a few-shot result on data the encoder has already seen is
  not few-shot. `--config.allow_overlap=True` turns the error into a warning.

Each check reads only the checkpoint's JSON metadata and raises one ValueError naming the flag.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.leakage import describe_overlap, pretraining_overlap

CONTEXT_FLAG = "--config.allow_longer_context=True"
OVERLAP_FLAG = "--config.allow_overlap=True"


def check_context_length(input_len: int, metadata: Mapping[str, Any], allow_longer: bool, where: str) -> None:
    """Raises (or, with `allow_longer`, warns) when `input_len` exceeds the trained context length.

    `where` names the checkpoint in the message. Unrecorded lengths pass silently.
    """
    trained = ckpt_io.trained_context_length(metadata)
    if trained is None or input_len <= trained:
        return
    message = (f"--config.input_len={input_len} is longer than the {trained}-step contexts init_from {where} was "
               f"pretrained on")
    if not allow_longer:
        raise ValueError(f"{message}; use --config.input_len<={trained} or pass {CONTEXT_FLAG} "
                         "(Forecaster.fit: overrides={'allow_longer_context': True})")
    warnings.warn(f"{message} ({CONTEXT_FLAG}): the encoder never saw contexts this long", stacklevel=3)


def check_overlap(dataset_name: Any, metadata: Mapping[str, Any], allow_overlap: bool, where: str) -> None:
    """Raises (or, with `allow_overlap`, warns) when the pretraining corpus held the target dataset.

    Unrecorded corpora, user files and DataFrames pass silently (corpora list registered sets only).
    """
    overlap = pretraining_overlap(metadata, dataset_name)
    if not overlap:
        return
    message = (f"init_from {where}: its pretraining corpus contains {describe_overlap(overlap, dataset_name)}, "
               f"so adapting to {dataset_name} is not few-shot")
    if not allow_overlap:
        raise ValueError(f"{message}; choose another dataset or checkpoint, or pass {OVERLAP_FLAG}")
    warnings.warn(f"{message} ({OVERLAP_FLAG})", stacklevel=3)
