"""Susceptibility models: classic scikit-learn estimators behind one registry."""

from metalsm.models.classic import (
    MODEL_NAMES,
    FactorPipeline,
    FrequencyRatioClassifier,
    make_model,
)

__all__ = ["MODEL_NAMES", "FactorPipeline", "FrequencyRatioClassifier", "make_model"]
