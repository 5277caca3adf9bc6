"""volcast: raw Kaggle stock-market CSVs to a served trading-volume model."""

__version__ = "0.1.0"
