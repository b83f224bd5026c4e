"""Scoring what the models predict: the one K-shot protocol (:mod:`.kshot`)."""

from metalsm.evaluation.kshot import (
    METRICS,
    AdaptedBlocks,
    FittedMethod,
    Method,
    ZeroShot,
    compare_methods,
    draw_support,
    fit_set,
    query_mask,
    summarize,
)

__all__ = ["METRICS", "AdaptedBlocks", "FittedMethod", "Method", "ZeroShot",
           "compare_methods", "draw_support", "fit_set", "query_mask", "summarize"]
