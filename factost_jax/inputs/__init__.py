"""Input parsing for the Forecaster: arrays (`series.py`) and pandas time axes (`timestamps.py`)."""
