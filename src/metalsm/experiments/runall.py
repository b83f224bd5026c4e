"""``metalsm experiment all``: every registered experiment, one report, one manifest.

The experiments run in the order of :data:`ORDER` (then any other registered one),
each into ``OUT/NAME/``; the comparisons, ablations and validation share one
prepared data value and reuse each other's fitted networks (:class:`Context`).
``credibility`` needs rasters: it is skipped, with the reason in the report, for
table study areas. ``OUT/report.html`` holds a section per experiment and
``OUT/manifest.json`` the config, versions, input checksums, seeds and timings.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metalsm.atomic import write_json
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.experiments.common import ExperimentResult, apply_preset, repeats_of
from metalsm.experiments.comparison import Context
from metalsm.report.html import Section, write_report

log = logging.getLogger(__name__)

ORDER = ("kshot", "overall", "ablation", "validation", "cross-area", "credibility")

__all__ = ["ORDER", "run_all"]


def _inputs(config: StudyAreaConfig) -> list[str]:
    if config.table is not None:
        return [config.table.path]
    paths = [config.dem, config.inventory.path] if config.inventory else [config.dem]
    paths += [r.path for r in config.rasters] + [v.path for v in config.vectors]
    return [p for p in paths if p]


def skip_reason(name: str, config: StudyAreaConfig) -> str | None:
    """Why ``name`` cannot run on ``config`` (None: it can)."""
    if name == "credibility" and config.table is not None:
        return ("the credibility band sweep needs rasters (a factor stack to draw "
                "negatives from); this study area is a sample table")
    return None


def run_all(config: StudyAreaConfig, out_dir: str | Path, *, repeats: int | None = None,
            preset: str | None = None,
            experiments: dict[str, Callable[..., Any]] | None = None) -> ExperimentResult:
    """Run every experiment of ``experiments`` (default: the registry) into ``out_dir``."""
    from metalsm.experiments import EXPERIMENTS
    from metalsm.pipeline._manifest import build_manifest

    started = time.perf_counter()
    registry = {k: v for k, v in (experiments or EXPERIMENTS).items() if k != "all"}
    names = [n for n in ORDER if n in registry] + [n for n in registry if n not in ORDER]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small = apply_preset(config, preset)
    context = Context()
    sections: list[Section] = []
    paths: dict[str, Path] = {}
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds (all threads): the load-free cost
    status: dict[str, str] = {}
    for name in names:
        reason = skip_reason(name, config)
        if reason is not None:
            status[name] = f"skipped: {reason}"
            sections.append(Section(f"{name} (skipped)", text=f"Skipped: {reason}."))
            continue
        func = registry[name]
        # every experiment is offered the same settings; a registry entry drops those its
        # experiment does not take, a plain function gets only those it names
        params = inspect.signature(func).parameters
        wrapped = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        offered = {"repeats": repeats, "preset": preset, "context": context}
        kwargs = {k: v for k, v in offered.items() if wrapped or k in params}
        t, c = time.perf_counter(), time.process_time()
        try:
            result = func(config, out / name, **kwargs)
        except MetalsmInputError as exc:
            status[name] = f"failed: {exc}"
            log.warning("experiment %s failed: %s", name, exc)
            sections.append(Section(f"{name} (failed)", text=f"Failed: {exc}"))
            continue
        timings[name] = round(time.perf_counter() - t, 3)
        cpu[name] = round(time.process_time() - c, 3)
        status[name] = "done"
        sections.append(result.section or Section(name))
        for key, path in result.paths.items():
            paths[f"{name}/{key}"] = Path(path)
    seconds = round(time.perf_counter() - started, 3)
    timings["total"] = seconds
    exp = small.experiments
    manifest = build_manifest(
        config=config.to_dict(), inputs=_inputs(config),
        seeds={"experiments": exp.seed, "blocks": (small.blocks.seed if small.blocks else 42),
               "validation": small.validation.seed},
        metrics={"experiments": status, "repeats": repeats_of(small, repeats),
                 "preset": preset, "cpu_s": cpu},
        timings_s=timings,
        outputs=sorted(str(p.relative_to(out)) for p in paths.values()
                       if p.is_relative_to(out)) + ["report.html", "manifest.json"])
    paths["manifest"] = write_json(out / "manifest.json", manifest)
    sections.append(Section("Provenance", preformatted=[
        {k: manifest[k] for k in ("versions", "seeds", "inputs_sha256", "timings_s")},
        ("Experiments", status)]))
    paths["report"] = write_report(
        out / "report.html", title=f"Experiments — {config.name}", sections=sections,
        subtitle=f"{repeats_of(small, repeats)} repeats"
                 + (f", preset {preset}" if preset else ""))
    return ExperimentResult(paths, seconds, {}, None)
