"""Scoring what the models predict: cross-validation (random, spatial, repeated,
buffered), metrics and curves, and the one K-shot protocol."""

from metalsm.evaluation import _kshot, _maps, _validation
from metalsm.evaluation._kshot import *  # noqa: F403
from metalsm.evaluation._maps import *  # noqa: F403
from metalsm.evaluation._validation import *  # noqa: F403

__all__ = [*_validation.__all__, *_maps.__all__, *_kshot.__all__]
