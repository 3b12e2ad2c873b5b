"""Shared, non-algorithmic helpers: reward verification (`reward.py`) and data loading (`data.py`)."""
