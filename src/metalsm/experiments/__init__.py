"""Experiments beyond a single run: each a function ``config, out_dir -> result``.

:data:`EXPERIMENTS` maps the names accepted by ``metalsm experiment NAME`` to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _credibility(config: Any, out_dir: Any, **kwargs: Any) -> Any:
    from metalsm.experiments.credibility import run_credibility_experiment

    return run_credibility_experiment(config, out_dir, **kwargs)


EXPERIMENTS: dict[str, Callable[..., Any]] = {"credibility": _credibility}

__all__ = ["EXPERIMENTS"]
