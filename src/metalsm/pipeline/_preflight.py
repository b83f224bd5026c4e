"""Checks before a run computes anything: every input's header and the output folder.

One pass reads the headers of the DEM, the thematic rasters, the vectors, the
inventory or the sample table, and looks at the output folder; it reports every
problem at once (file, key or column, value, what was expected), so a user fixes
them in one go and no output is written before the inputs are known to be usable.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from metalsm.atomic import RUN_MARKER
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.inputs import RASTER_SUFFIXES

__all__ = [
    "check_run",
    "first_line",
    "fold_problems",
    "input_files",
    "output_problems",
]

log = logging.getLogger(__name__)


def input_files(config: StudyAreaConfig) -> dict[str, str]:
    """Every input file of ``config`` by the config key that names it."""
    files = {"config": config.source} if config.source else {}
    if config.table is not None:
        files["table.path"] = config.table.path
    if config.dem is not None:
        files["dem"] = config.dem
    if config.inventory is not None:
        files["inventory.path"] = config.inventory.path
    files.update({f"rasters[{i}].path": r.path for i, r in enumerate(config.rasters)})
    files.update({f"vectors[{i}].path": v.path for i, v in enumerate(config.vectors)})
    return files


def check_run(config: StudyAreaConfig, out: str | Path | None, *,
              needs_rasters: bool = False, command: str = "run",
              replaces_out: bool = True) -> None:
    """Raise one :class:`MetalsmInputError` listing every problem of ``config``'s inputs
    and of the output folder ``out`` (None: no output folder to check).

    ``replaces_out``: the command replaces ``out`` as a whole (a staged run), so ``out``
    must be new, empty or a previous run; the step-by-step commands add to ``out``."""
    problems: list[str] = []
    if out is not None:
        problems += output_problems(Path(out), input_files(config), replaces_out)
    if config.table is not None:
        if needs_rasters:
            problems.append(
                f"{config.source}: '{config.name}' is a sample-table study area ([table]); "
                f"`metalsm {command}` needs a raster study area (dem, [inventory], [[rasters]])")
        else:
            problems += _table_problems(config)
    else:
        problems += _raster_area_problems(config)
    if len(problems) == 1:
        raise MetalsmInputError(problems[0])
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise MetalsmInputError(f"{len(problems)} problems, nothing was written:\n{listed}")


def output_problems(out: Path, inputs: dict[str, str], replaces_out: bool = True
                    ) -> list[str]:
    """The output folder must be a writable folder holding no input; one that a run
    replaces as a whole must also be new, empty, or a previous metalsm run."""
    out = out.absolute()
    if out.exists() and not out.is_dir():
        return [f"--out {out} is a file; give a folder for the run's outputs"]
    inside = [f"{key} {path}" for key, path in inputs.items()
              if Path(path).absolute().resolve().is_relative_to(out.resolve())]
    if inside:
        return [f"input {name} lies inside the output folder {out}; outputs never go where "
                "an input is (a run replaces its folder as a whole): move the input out or "
                "choose another --out" for name in inside]
    if replaces_out and out.is_dir() and any(out.iterdir()) and not _is_run_dir(out):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return [f"--out {out} holds files that are not a metalsm run ({shown}); choose a new "
                "or empty folder (a rerun replaces its folder as a whole)"]
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [f"--out {out}: {ancestor} is a file, not a folder"]
    try:  # a real write: permission bits do not tell a read-only filesystem (or root) apart
        Path(tempfile.mkdtemp(prefix=".metalsm-probe-", dir=ancestor)).rmdir()
    except OSError as exc:
        return [f"--out {out}: cannot write in {ancestor} ({exc.strerror}); choose a "
                "writable folder"]
    return []


def _is_run_dir(folder: Path) -> bool:
    return (folder / RUN_MARKER).exists() or (folder / "manifest.json").exists()


def _raster_area_problems(config: StudyAreaConfig) -> list[str]:
    from metalsm.raster import reference_grid

    problems: list[str] = []
    rasters = [("dem", config.dem)]
    rasters += [(f"rasters[{i}] '{r.name}'", r.path) for i, r in enumerate(config.rasters)]
    header_problems = {key: _raster_header_problem(path, key) for key, path in rasters}
    problems += [p for p in header_problems.values() if p]
    grid = None
    if not header_problems["dem"]:
        try:
            grid = reference_grid(config)
        except MetalsmInputError as exc:
            problems.append(str(exc))
        except Exception as exc:  # GDAL cannot build the grid of [grid] from this DEM
            problems.append(f"{config.source}: [grid] crs = {config.grid.crs!r}, resolution = "
                            f"{config.grid.resolution} cannot be applied to DEM {config.dem}: "
                            f"{exc}")
    if grid is not None:
        for key, path in rasters[1:]:
            if not header_problems[key]:
                problems += _overlap_problems(path, key, grid)
    vectors = [(f"vectors[{i}] '{v.name}'", v.path) for i, v in enumerate(config.vectors)]
    inventory = config.inventory
    suffix = Path(inventory.path).suffix.lower() if inventory is not None else ""
    if inventory is not None and suffix in (".csv", ".txt"):
        problems += _inventory_table_problems(inventory)
    elif inventory is not None and suffix in RASTER_SUFFIXES:  # a mask or labelled raster
        problem = _raster_header_problem(inventory.path, "inventory")
        if problem:
            problems.append(problem)
        elif grid is not None:
            problems += _overlap_problems(inventory.path, "inventory", grid)
    elif inventory is not None:
        vectors.append(("inventory", inventory.path))
    for key, path in vectors:
        problems += _vector_problems(path, key, grid)
    return problems


def _raster_header_problem(path: str, key: str) -> str | None:
    """Whether the raster opens, has a CRS and can be read to its last block (a truncated
    file opens but fails there)."""
    import rasterio
    from rasterio.windows import Window

    from metalsm.raster import open_raster

    try:
        with open_raster(path) as src:
            block_h, block_w = src.block_shapes[0]
            row = (src.height - 1) // block_h * block_h
            col = (src.width - 1) // block_w * block_w
            src.read(1, window=Window(col, row, min(block_w, src.width - col),
                                      min(block_h, src.height - row)))
    except MetalsmInputError as exc:
        return f"{key}: {exc}"
    except (rasterio.errors.RasterioError, OSError) as exc:
        return (f"{key}: raster {path} cannot be read to its end ({first_line(exc)}); "
                "the file is truncated or corrupt: copy or export it again")
    return None


def _overlap_problems(path: str, key: str, grid) -> list[str]:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        bounds = transform_bounds(src.crs, grid.crs, *src.bounds)
    share = _overlap_share(bounds, grid.bounds)
    if share == 0:
        return [f"{key}: raster {path} does not overlap the study grid (its extent "
                f"{_fmt(bounds)} against the grid's {_fmt(grid.bounds)} in {grid.crs})"]
    if share < 0.99:
        log.warning("%s: raster %s covers %.0f %% of the study grid; cells outside it have no "
                    "data and no samples", key, path, 100 * share)
    return []


def _vector_problems(path: str, key: str, grid) -> list[str]:
    import pyogrio
    from rasterio.warp import transform_bounds

    if not Path(path).exists():
        return [f"{key}: file not found: {path}"]
    try:
        info = pyogrio.read_info(path, force_total_bounds=True)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        return [f"{key}: cannot read vector file {path} ({first_line(exc)})"]
    if info.get("crs") is None:
        return [f"{key}: vector file {path} has no CRS (missing .prj?); assign one"]
    if not info.get("features"):
        return [f"{key}: vector file {path} holds no features"]
    bounds = info.get("total_bounds")
    if grid is None or bounds is None or not np.all(np.isfinite(bounds)):
        return []
    try:
        bounds = transform_bounds(info["crs"], grid.crs, *bounds)
    except Exception:  # noqa: BLE001 - the full read reprojects and names any error
        return []
    if _outside(bounds, grid.bounds):
        return [f"{key}: vector file {path} lies outside the study grid (its extent "
                f"{_fmt(bounds)} against the grid's {_fmt(grid.bounds)} in {grid.crs})"]
    return []


def _inventory_table_problems(inventory) -> list[str]:
    from metalsm.samples import read_table_frame

    if inventory.crs is None:
        return [f"inventory.path {inventory.path} is a table: set inventory.crs to its CRS"]
    try:
        header = read_table_frame(inventory.path, nrows=0)
    except MetalsmInputError as exc:
        return [f"inventory.path: {exc}"]
    missing = [c for c in (inventory.x_column, inventory.y_column) if c not in header.columns]
    if missing:
        return [f"inventory.path {inventory.path}: missing coordinate column(s) {missing} "
                f"(inventory.x_column/y_column); columns are {list(header.columns)}"]
    return []


def _table_problems(config: StudyAreaConfig) -> list[str]:
    from metalsm.samples import read_sample_table

    try:
        samples = read_sample_table(config.table, warn=False)
    except MetalsmInputError as exc:
        return [str(exc)]
    return fold_problems(config, samples.y, f"table {config.table.path}")


def fold_problems(config: StudyAreaConfig, y: np.ndarray, where: str) -> list[str]:
    """``validation.n_folds`` needs at least as many samples of each class."""
    fewest = int(min((y == 1).sum(), (y == 0).sum()))
    if config.validation.n_folds > fewest:
        return [f"{config.source}: validation.n_folds = {config.validation.n_folds} is more "
                f"than the {fewest} samples of the rarer class in {where}; use at most "
                f"{max(fewest, 2)} folds"]
    return []


def _overlap_share(inner: tuple, outer: tuple) -> float:
    """Share of ``outer``'s area covered by ``inner`` (both left, bottom, right, top)."""
    width = min(inner[2], outer[2]) - max(inner[0], outer[0])
    height = min(inner[3], outer[3]) - max(inner[1], outer[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((outer[2] - outer[0]) * (outer[3] - outer[1]))


def _outside(inner: tuple, outer: tuple) -> bool:
    """Boxes apart (a single point's box has no area, so the overlap share cannot tell)."""
    return (inner[0] > outer[2] or inner[2] < outer[0]
            or inner[1] > outer[3] or inner[3] < outer[1])


def _fmt(bounds: tuple) -> str:
    return "(" + ", ".join(f"{b:.6g}" for b in bounds) + ")"


def first_line(exc: BaseException) -> str:
    """The first line of the message; rasterio's "See previous exception" points at GDAL's
    own message, which is the useful one."""
    if "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
