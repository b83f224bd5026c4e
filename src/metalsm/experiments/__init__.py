"""Experiments beyond a single run: each a function ``config, out_dir -> result``.

:data:`EXPERIMENTS` maps the names accepted by ``metalsm experiment NAME`` to them.
Each module is imported only when its experiment runs (torch, UMAP and friends are
slow to import, and ``metalsm --help`` should not wait for them).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def _lazy(module: str, function: str, drop: tuple[str, ...] = ()) -> Callable[..., Any]:
    """``metalsm.experiments.<module>.<function>``, imported on first call; the keyword
    arguments in ``drop`` are not passed on (settings that experiment does not take)."""

    def run(config: Any, out_dir: Any, **kwargs: Any) -> Any:
        for key in drop:
            kwargs.pop(key, None)
        return getattr(import_module(f"metalsm.experiments.{module}"), function)(
            config, out_dir, **kwargs)

    run.__name__ = function
    return run


#: ``context`` (data and fits shared within one ``all`` run) goes to the experiments
#: that can reuse it; the credibility band sweep takes its settings from [credibility].
EXPERIMENTS: dict[str, Callable[..., Any]] = {
    "credibility": _lazy("credibility", "run_credibility_experiment",
                         drop=("repeats", "preset", "context")),
    "overall": _lazy("comparison", "run_overall"),
    "kshot": _lazy("comparison", "run_kshot"),
    "ablation": _lazy("ablation", "run_ablation"),
    "validation": _lazy("spatial", "run_validation"),
    "all": _lazy("runall", "run_all", drop=("context",)),
    "cross-area": _lazy("cross_area", "run_cross_area", drop=("context",)),
    "embeddings": _lazy("embeddings", "run_embeddings_experiment", drop=("context",)),
    "maps": _lazy("maps", "run_maps_experiment", drop=("context",)),
}

__all__ = ["EXPERIMENTS"]
