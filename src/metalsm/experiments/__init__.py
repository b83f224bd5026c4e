"""Experiments beyond a single run: each a function ``config, out_dir -> result``.

:data:`EXPERIMENTS` maps the names accepted by ``metalsm experiment NAME`` to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _credibility(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.credibility import run_credibility_experiment

    for key in ("repeats", "preset", "context"):  # the band sweep has its own settings
        kwargs.pop(key, None)
    return run_credibility_experiment(config, out_dir, **kwargs)


def _overall(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.comparison import run_overall

    return run_overall(config, out_dir, **kwargs)


def _kshot(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.comparison import run_kshot

    return run_kshot(config, out_dir, **kwargs)


def _ablation(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.ablation import run_ablation

    return run_ablation(config, out_dir, **kwargs)


def _validation(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.spatial import run_validation

    return run_validation(config, out_dir, **kwargs)


def _all(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.runall import run_all

    kwargs.pop("context", None)
    return run_all(config, out_dir, **kwargs)


def _cross_area(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.cross_area import run_cross_area

    return run_cross_area(config, out_dir, **kwargs)


def _embeddings(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.embeddings import run_embeddings_experiment

    return run_embeddings_experiment(config, out_dir, **kwargs)


def _maps(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.maps import run_maps_experiment

    return run_maps_experiment(config, out_dir, **kwargs)


EXPERIMENTS: dict[str, Callable[..., Any]] = {"credibility": _credibility}
EXPERIMENTS.update({"overall": _overall, "kshot": _kshot, "ablation": _ablation,
                    "validation": _validation, "all": _all})
EXPERIMENTS.update({"cross-area": _cross_area, "embeddings": _embeddings, "maps": _maps})

__all__ = ["EXPERIMENTS"]
