"""metalsm: landslide susceptibility mapping on real GIS data.

The public API, loaded on first use so that ``import metalsm`` stays light::

    import metalsm
    config = metalsm.load_config("examples/kaghan.toml")
    result = metalsm.run(config, "runs/kaghan", show_progress=False)
"""

from __future__ import annotations

from metalsm._lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> (module, attribute).
_API = {
    "load_config": ("metalsm.config", "load_config"),
    "StudyAreaConfig": ("metalsm.config", "StudyAreaConfig"),
    "run": ("metalsm.pipeline._run", "run_pipeline"),
    "RunResult": ("metalsm.pipeline._manifest", "RunResult"),
    "Samples": ("metalsm.samples._table", "Samples"),
    "MetalsmInputError": ("metalsm.errors", "MetalsmInputError"),
    "MODEL_NAMES": ("metalsm.models.classic", "MODEL_NAMES"),
    "make_model": ("metalsm.models.classic", "make_model"),
    "FrequencyRatioClassifier": ("metalsm.models.classic", "FrequencyRatioClassifier"),
    "evaluate_models": ("metalsm.evaluation._validation", "evaluate_models"),
    "predict_raster": ("metalsm.mapping", "predict_raster"),
    "zone_breaks": ("metalsm.mapping", "zone_breaks"),
    "cog_problems": ("metalsm.raster._cog", "cog_problems"),
}

__all__ = ["__version__", *_API]
__getattr__, _dir = lazy_exports(__name__, _API)


def __dir__() -> list[str]:
    return sorted(__all__)
