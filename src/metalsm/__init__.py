"""metalsm: landslide susceptibility mapping on real GIS data.

The public API, loaded on first use so that ``import metalsm`` stays light::

    import metalsm
    config = metalsm.load_config("examples/kaghan.toml")
    result = metalsm.run(config, "runs/kaghan", show_progress=False)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> (module, attribute).
_API = {
    "load_config": ("metalsm.config", "load_config"),
    "StudyAreaConfig": ("metalsm.config", "StudyAreaConfig"),
    "run": ("metalsm.pipeline", "run_pipeline"),
    "RunResult": ("metalsm.manifest", "RunResult"),
    "Samples": ("metalsm.sample_table", "Samples"),
    "MetalsmInputError": ("metalsm.errors", "MetalsmInputError"),
    "MODEL_NAMES": ("metalsm.models.classic", "MODEL_NAMES"),
    "make_model": ("metalsm.models.classic", "make_model"),
    "FrequencyRatioClassifier": ("metalsm.models.classic", "FrequencyRatioClassifier"),
    "evaluate_models": ("metalsm.validation", "evaluate_models"),
    "predict_raster": ("metalsm.mapping", "predict_raster"),
    "zone_breaks": ("metalsm.mapping", "zone_breaks"),
    "cog_problems": ("metalsm.cog", "cog_problems"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'metalsm' has no attribute '{name}'")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
