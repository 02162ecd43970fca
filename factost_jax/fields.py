"""Dataclass configs from user mappings (the basement: imports nothing of the package).

Every config that a user spells as a dict, a ConfigDict or flags refuses a key it does not have
with the same one-line message, naming the key and the ones it has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


def field_names(cls: Any) -> set[str]:
    """The field names of dataclass `cls`."""
    return {field.name for field in dataclasses.fields(cls)}


def reject_unknown_fields(keys: Iterable[str], known: Iterable[str], where: str) -> None:
    """ValueError `WHERE: unknown field(s) [...]; known fields are [...]` when `keys` has one `known` lacks."""
    known = set(known)
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
