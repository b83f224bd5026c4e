"""The run manifest: what produced these outputs, so a run can be audited and repeated."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RunResult",
    "build_manifest",
    "collect_warnings",
    "file_checksums",
    "package_versions",
]


@dataclass
class RunResult:
    """What a finished run reports: where, how long, its metrics and a few headline lines."""

    out_dir: Path
    seconds: float
    metrics: dict
    headline: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def collect_warnings():
    """Yield a list that receives every warning logged by metalsm meanwhile (for
    ``metrics.json`` and the report: what the console showed, kept with the run)."""
    warned: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warned.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("metalsm")
    logger.addHandler(handler)
    try:
        yield warned
    finally:
        logger.removeHandler(handler)


_PACKAGES = (
    "metalsm", "numpy", "scipy", "pandas", "rasterio", "geopandas", "pyogrio", "shapely",
    "pyproj", "scikit-learn", "numba", "torch", "matplotlib",
)
_SHAPEFILE_PARTS = (".prj", ".dbf", ".shx", ".cpg")
_RASTER_SIDECARS = (".aux.xml", ".ovr")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import rasterio

        versions["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return versions


def file_checksums(paths: list[str | Path]) -> dict[str, str]:
    """SHA-256 of each input file and of the sidecar files that belong to it."""
    sums: dict[str, str] = {}
    for path in map(Path, paths):
        related = [path.with_suffix(s) for s in _SHAPEFILE_PARTS]
        related += [Path(f"{path}{s}") for s in _RASTER_SIDECARS]
        for p in [path, *related]:
            if p.exists():
                sums[str(p)] = _sha256(p)
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    *,
    config: dict[str, Any],
    inputs: list[str | Path],
    seeds: dict[str, int],
    metrics: dict[str, Any],
    timings_s: dict[str, float],
    outputs: list[str],
) -> dict[str, Any]:
    return {
        # written last, into a staging folder that becomes the run directory only when
        # the run is complete (metalsm.atomic.staged_directory)
        "status": "complete",
        "config": config,
        "versions": package_versions(),
        "seeds": seeds,
        "inputs_sha256": file_checksums(inputs),
        "metrics": metrics,
        "timings_s": timings_s,
        "outputs": outputs,
    }
