"""The registry of bundled datasets: each one's conventions (`DatasetInfo`: folder and files, BasicTS
split, normalisation, null value, frequency, domain, evaluation set or not) and name canonicalisation.
Pure data: no file is read here.
"""

from __future__ import annotations

import dataclasses
import os

PathLike = str | os.PathLike

_SENSOR_SPLIT = (0.6, 0.2, 0.2)
_LTSF_SPLIT = (0.7, 0.1, 0.2)
_NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The conventions of one dataset (BasicTS where BasicTS has one).

    Attributes:
      name: canonical name, e.g. "PEMS08", "HZMETRO:out", "M4:hourly".
      folder: sub-folder of the data directory, or None for SYNTHETIC (generated, no files).
      domain: short tag ("traffic", "metro", "air", "energy", ...).
      split_ratios: (train, val, test) fractions.
      norm: "global" or "per_node".
      null_val: the value metrics mask out (0.0 for count-like sensor sets, NaN otherwise).
      rescale: True when metrics are reported in original units.
      freq: pandas offset alias of one step.
      is_evaluation: True for evaluation sets and their twins (kept out of pretraining by default).
      files: the files the loader needs, relative to `folder`; "a|b" means either a or b.
      start: first timestamp when the files carry none but the source documents it.
      max_steps: keep only the first `max_steps` steps (ETT: its first 20 months).
    """

    name: str
    folder: str | None
    domain: str
    split_ratios: tuple[float, float, float]
    norm: str
    null_val: float
    rescale: bool
    freq: str
    is_evaluation: bool
    files: tuple[str, ...] = ()
    start: str | None = None
    max_steps: int | None = None


def _sensor(name, folder, domain, freq, files, *, evaluation, split=_SENSOR_SPLIT, null_val=0.0, start=None):
    return DatasetInfo(name=name, folder=folder, domain=domain, split_ratios=split, norm="global",
                       null_val=null_val, rescale=True, freq=freq, is_evaluation=evaluation,
                       files=tuple(files), start=start)


def _ltsf(name, folder, domain, freq, files, *, evaluation, split=_LTSF_SPLIT, max_steps=None):
    return DatasetInfo(name=name, folder=folder, domain=domain, split_ratios=split, norm="per_node",
                       null_val=_NAN, rescale=False, freq=freq, is_evaluation=evaluation,
                       files=tuple(files), max_steps=max_steps)


PEMS_STARTS = {"PEMS03": "2018-09-01", "PEMS04": "2018-01-01", "PEMS07": "2017-05-01", "PEMS08": "2016-07-01"}

_INFOS: list[DatasetInfo] = [
    *(
        _sensor(stem, stem, "traffic", "5min",
                (f"{stem}.npz", f"{stem}.csv") + ((f"{stem}.txt",) if stem == "PEMS03" else ()),
                evaluation=True, start=start)
        for stem, start in PEMS_STARTS.items()
    ),
    _sensor("METR-LA", "METR-LA", "traffic", "5min", ("metr-la.h5", "adj_mx.pkl"), evaluation=True,
            split=_LTSF_SPLIT, start="2012-03-01"),
    _sensor("PEMS-BAY", "PEMS-BAY", "traffic", "5min", ("pems-bay.h5", "adj_mx_bay.pkl"), evaluation=True,
            split=_LTSF_SPLIT, start="2017-01-01"),
    _sensor("LOS-LOOP", "LOS-LOOP", "traffic", "5min", ("los_speed.csv", "los_adj.csv"), evaluation=True,
            start="2012-03-01 00:00"),
    _sensor("HZMETRO", "HZMETRO", "metro", "5min", ("HZME_INFLOW.npz|HZME_INFLOW.h5", "HZME_adj_mx.pkl"),
            evaluation=True),
    _sensor("HZMETRO:out", "HZMETRO", "metro", "5min", ("HZME_OUTFLOW.npz|HZME_OUTFLOW.h5", "HZME_adj_mx.pkl"),
            evaluation=True),
    _sensor("AQI36", "AQI36", "air", "1h", ("pm25_ground.txt", "pm25_latlng.txt"), evaluation=True, null_val=_NAN),
    _sensor("NYCBIKE1", "NYCBIKE1", "bike", "1h", ("val.npz", "test.npz", "adj_mx.npz"), evaluation=False),
    _sensor("MONTEVIDEO_BUS", "MONTEVIDEO_BUS", "bus", "1h", ("montevideo_bus.json",), evaluation=False,
            start="2020-10-01 00:00"),
    _sensor("CHICKENPOX_HU", "CHICKENPOX_HU", "epidemiology", "7D", ("chickenpox.json",), evaluation=False,
            null_val=_NAN, start="2005-01-03"),
    _sensor("ENGLAND_COVID", "ENGLAND_COVID", "epidemiology", "1D", ("england_covid.json",), evaluation=False,
            null_val=_NAN),
    _sensor("PEDALME_LONDON", "PEDALME_LONDON", "delivery", "7D", ("pedalme_london.json",), evaluation=False,
            null_val=_NAN),
    _ltsf("ETTh1", "ETT", "energy", "1h", ("ETTh1.csv",), evaluation=False, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24),
    _ltsf("ETTh2", "ETT", "energy", "1h", ("ETTh2.csv",), evaluation=True, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24),
    _ltsf("ETTm1", "ETT", "energy", "15min", ("ETTm1.csv",), evaluation=False, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24 * 4),
    _ltsf("ETTm2", "ETT", "energy", "15min", ("ETTm2.csv",), evaluation=True, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24 * 4),
    _ltsf("WEATHER", "WEATHER", "weather", "10min", ("weather.csv",), evaluation=True),
    _ltsf("EXCHANGE_RATE", "EXCHANGE_RATE", "finance", "1D", ("exchange_rate.txt.gz",), evaluation=False),
    _ltsf("ILLNESS", "ILLNESS", "epidemiology", "7D", ("national_illness.csv",), evaluation=False),
    _ltsf("ELECTRICITY", "ELECTRICITY", "energy", "1h", ("electricity.csv",), evaluation=True),
    _ltsf("M4:hourly", "M4", "mixed", "1h", ("Hourly-train.csv",), evaluation=False),
    _ltsf("M4:weekly", "M4", "mixed", "7D", ("Weekly-train.csv",), evaluation=False),
    _sensor("SYNTHETIC", None, "synthetic", "5min", (), evaluation=False),
]

DATASET_INFO: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}

EVALUATION_DATASETS: tuple[str, ...] = tuple(info.name for info in _INFOS if info.is_evaluation)

# Variant spellings of the datasets that have variants; "" is the default.
_VARIANTS: dict[str, dict[str, str]] = {
    "HZMETRO": {"": "HZMETRO", "in": "HZMETRO", "inflow": "HZMETRO", "out": "HZMETRO:out", "outflow": "HZMETRO:out"},
    "M4": {"": "M4:hourly", "hourly": "M4:hourly", "h": "M4:hourly", "weekly": "M4:weekly", "w": "M4:weekly"},
}
# Other common names of the same datasets.
_ALIASES = {"ECL": "ELECTRICITY", "ILI": "ILLNESS", "AQI-36": "AQI36", "EXCHANGE": "EXCHANGE_RATE"}


def name_key(base: str) -> str:
    """Case and '-'/'_'/space separators do not matter ("pems_08" == "PEMS08"); no two datasets collide."""
    return "".join(ch for ch in base.upper() if ch not in "-_ ")


_BASE_NAMES: dict[str, str] = {name_key(n.partition(":")[0]): n.partition(":")[0] for n in DATASET_INFO}
_BASE_NAMES.update({name_key(alias): target for alias, target in _ALIASES.items()})


def canonical_name(name: str) -> str:
    """The canonical dataset name for a user spelling: case and separators ignored, optional ':variant'.

    "etth1" -> "ETTh1", "los_loop" -> "LOS-LOOP", "HZMETRO:OUT" -> "HZMETRO:out", "m4" -> "M4:hourly".
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    base, _, variant = name.partition(":")
    base_name = _BASE_NAMES.get(name_key(base))
    if base_name is None:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_INFO)}")
    variant = variant.strip().lower()
    if base_name in _VARIANTS:
        table = _VARIANTS[base_name]
        if variant not in table:
            choices = ", ".join(sorted(v for v in table if v))
            raise ValueError(f"unknown variant {variant!r} of dataset {base_name}: expected one of {choices}")
        return table[variant]
    if variant:
        raise ValueError(f"dataset {base_name} has no variants, got {name!r}")
    return base_name


