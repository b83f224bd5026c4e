"""Out-of-core and distributed execution with Dask: everything after terrain derivation.

The in-memory path (:mod:`metalsm.stack`, :mod:`metalsm.credibility`,
:mod:`metalsm.segmentation`) holds every factor of the study area at once. This
module does the same work window by window so memory is bounded by the chunk
size, not by the raster:

* :func:`compute_context` — where the windows run: Dask's local threaded
  scheduler by default, or an existing ``dask.distributed`` cluster given its
  scheduler address (``tcp://host:8786``). No networking or job system of our
  own: start the cluster with dask-jobqueue, dask-kubernetes or ``dask scheduler``.
* :meth:`Compute.map_windows` — run a function per window and hand the results
  back to the caller in completion order, with a bounded number in flight.
* :func:`write_factor_stack` — ``factors.tif`` aligned and written window by window
  (the same bands, descriptions, nodata and categorical tag as
  :meth:`metalsm.stack.FactorStack.write`).
* :func:`fit_membership_chunked` / :func:`write_credibility_chunked` — the fuzzy
  membership fitted from class histograms reduced over windows, then applied per window.
* :func:`segment_coarse` — segmentation of a region too large for memory on a
  coarser grid (decimated reads: average for continuous, mode for categorical
  factors), block ids carried back to the full grid window by window.
* :func:`choose_chunked` — whether a run should take this path (``--chunk-size``,
  ``--scheduler``, ``[compute]``, or the estimated stack size against free memory).

**How output GeoTIFFs are written.** Workers compute windows; only the process
that called :meth:`Compute.map_windows` (the client) writes them, into one open
dataset, under :meth:`Compute.lock` (a ``distributed.Lock`` when a client is
active, a ``threading.Lock`` otherwise). Workers may be other processes on other
machines: having each of them open a deflate-compressed tiled GeoTIFF in ``r+``
mode would rewrite shared compressed tiles from several processes (a window
smaller than a tile touches a tile another window also writes; GDAL appends the
recompressed tile and the loser's half is lost unless every read-modify-write of
the tile is serialised) and needs the output on a filesystem every worker can
write. Gathering the window arrays to the client keeps one writer, the atomic
temporary-then-rename of :mod:`metalsm.atomic`, and costs only the window's bytes
over the network. Inputs (``factors.tif``, source rasters) are read by the workers,
so they must sit on a filesystem every worker sees at the same path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.warp import reproject
from rasterio.windows import Window

from metalsm.cog import atomic_cog
from metalsm.errors import MetalsmInputError
from metalsm.grid import Grid, open_raster, read_class_names, resampling_onto
from metalsm.mapping import iter_windows
from metalsm.stack import _CATEGORICAL_TAG, FactorStack, stack_metadata
from metalsm.styles import write_blocks_style, write_credibility_style

log = logging.getLogger(__name__)

#: GDAL block cache (MB) inside each window task (workers have no outer rasterio.Env).
TASK_GDAL_CACHE_MB = 128
#: Share of available memory the in-memory stack may take before runs go chunked.
DEFAULT_MEMORY_FRACTION = 0.25
#: Valid cells kept (all factors) to fit the FR class edges of the chunked credibility.
CLASS_SAMPLE_CELLS = 4_000_000


# --------------------------------------------------------------------------- execution


@dataclass
class Compute:
    """Where window tasks run: ``client`` is a ``distributed.Client`` or None (local threads)."""

    client: Any = None
    num_workers: int | None = None
    max_in_flight: int = 8
    _locks: dict[str, Any] = field(default_factory=dict)

    @property
    def scheduler(self) -> str:
        return "distributed" if self.client is not None else "threads"

    def lock(self, name: str):
        """A lock for writes to ``name``: cluster-wide with a client, process-wide otherwise."""
        if name not in self._locks:
            if self.client is not None:
                from distributed import Lock

                self._locks[name] = Lock(f"metalsm-write-{name}",
                                         scheduler_rpc=self.client.scheduler,
                                         loop=self.client.loop)
            else:
                self._locks[name] = threading.Lock()
        return self._locks[name]

    def map_windows(self, func: Callable[[Window], Any], windows: Iterable[Window]
                    ) -> Iterator[tuple[Window, Any]]:
        """``(window, func(window))`` for every window, in completion order.

        At most ``max_in_flight`` windows are computed or held at once, so memory
        stays bounded whatever the number of windows. ``func`` must be picklable
        (cloudpickle) when the client's workers are other processes.
        """
        windows = iter(windows)
        task = _with_gdal_cache(func)
        if self.client is not None:
            yield from self._map_distributed(task, windows)
            return
        import dask

        own = _per_thread_copy(task)
        while True:
            batch = [w for _, w in zip(range(self.max_in_flight), windows, strict=False)]
            if not batch:
                return
            results = dask.compute(*[dask.delayed(own, pure=False)(w) for w in batch],
                                   scheduler="threads", num_workers=self.num_workers)
            yield from zip(batch, results, strict=True)

    def _map_distributed(self, task, windows: Iterator[Window]):
        from distributed import as_completed

        pending = {}
        # send the task (with the model, block labels... it closes over) to every worker
        # once, not with each window
        shared = self.client.scatter(task, broadcast=True, hash=False)

        def submit(win):
            future = self.client.submit(_call, shared, win, pure=False)
            pending[future] = win
            return future

        first = [submit(w) for _, w in zip(range(self.max_in_flight), windows, strict=False)]
        queue = as_completed(first, loop=self.client.loop)
        for future in queue:
            win = pending.pop(future)
            result = future.result()
            future.release()
            nxt = next(windows, None)
            if nxt is not None:
                queue.add(submit(nxt))
            yield win, result
        shared.release()


def _per_thread_copy(task: Callable) -> Callable:
    """``task`` run on a private copy (cloudpickle round trip) per thread.

    What a task closes over (a model) need not be thread-safe: PyTorch's
    ``functional_call``, used by the block-wise models, swaps parameters on a
    shared module and races between threads. Each thread gets its own copy, as
    each worker process of a cluster does.
    """
    import cloudpickle

    payload = cloudpickle.dumps(task)
    local = threading.local()

    def run(win):
        func = getattr(local, "func", None)
        if func is None:
            func = local.func = cloudpickle.loads(payload)
        return func(win)

    return run


def _call(func: Callable, win: Window) -> Any:
    return func(win)


def _with_gdal_cache(func: Callable) -> Callable:
    def task(win):
        with rasterio.Env(GDAL_CACHEMAX=TASK_GDAL_CACHE_MB):
            return func(win)

    return task


@contextlib.contextmanager
def compute_context(scheduler: str | None = None, *, num_workers: int | None = None,
                    max_in_flight: int | None = None) -> Iterator[Compute]:
    """A :class:`Compute` for the run: local threads, or the cluster at ``scheduler``.

    ``scheduler`` is None/``"threads"`` (Dask's local threaded scheduler) or the
    address of a running ``dask.distributed`` scheduler (``tcp://host:8786``), or an
    existing ``distributed.Client``. The client made here is closed on exit.
    """
    if scheduler is None or scheduler in ("threads", "local"):
        import os

        workers = num_workers or os.cpu_count() or 1
        yield Compute(None, workers, max_in_flight or max(2, 2 * workers))
        return
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise MetalsmInputError("--scheduler needs the 'distributed' package") from exc
    if isinstance(scheduler, Client):
        n = len(scheduler.scheduler_info().get("workers", {})) or 1
        yield Compute(scheduler, n, max_in_flight or max(4, 3 * n))
        return
    if not isinstance(scheduler, str) or "://" not in scheduler and ":" not in scheduler:
        raise MetalsmInputError(
            f"compute.scheduler / --scheduler must be 'threads' or a scheduler address "
            f"such as tcp://host:8786, got {scheduler!r}")
    try:
        client = Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise MetalsmInputError(
            f"cannot connect to the Dask scheduler at {scheduler} (--scheduler / "
            f"compute.scheduler): {exc}") from exc
    try:
        n = len(client.scheduler_info().get("workers", {})) or 1
        yield Compute(client, n, max_in_flight or max(4, 3 * n))
    finally:
        client.close()


# --------------------------------------------------------------------------- choice of path


def estimated_stack_bytes(config) -> int:
    """Bytes of the in-memory factor stack of ``config`` (float32, one band per factor)."""
    from metalsm.stack import reference_grid

    grid = reference_grid(config)
    n_factors = len(config.terrain.factors) + len(config.rasters) + len(config.vectors)
    # the in-memory path also holds the DEM and terrain temporaries: count ~2x
    return int(2 * 4 * grid.height * grid.width * max(1, n_factors))


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def choose_chunked(config, *, chunk_size: int | None = None, scheduler: str | None = None
                   ) -> tuple[bool, str]:
    """Whether a run takes the chunked path, and why (for the log and the manifest).

    ``chunk_size``/``scheduler`` (command line) win over ``[compute]``; with neither,
    the run is chunked when the estimated stack exceeds ``memory_fraction`` of
    the available memory (or of ``memory_limit_gb`` when set).
    """
    settings = getattr(config, "compute", None)
    chunk_size = chunk_size or (settings.chunk_size if settings else None)
    scheduler = scheduler or (settings.scheduler if settings else None)
    if chunk_size:
        return True, f"chunk size {chunk_size} requested"
    if scheduler and scheduler not in ("threads", "local"):
        return True, f"scheduler {scheduler} requested"
    if config.dem is None:
        return False, "sample-table study area"
    need = estimated_stack_bytes(config)
    limit_gb = settings.memory_limit_gb if settings else None
    have = int(limit_gb * 1e9) if limit_gb else available_memory_bytes()
    fraction = settings.memory_fraction if settings else DEFAULT_MEMORY_FRACTION
    if need > fraction * have:
        return True, (f"estimated stack {need / 1e9:.1f} GB > {fraction:g} x "
                      f"{have / 1e9:.1f} GB available")
    return False, f"estimated stack {need / 1e9:.2f} GB fits in memory"


# --------------------------------------------------------------------------- factor stack


@dataclass(frozen=True)
class LayerSource:
    """One factor to align per window: a raster path with its resampling rule, or an array."""

    name: str
    path: str | None = None
    categorical: bool = False
    array: np.ndarray | None = None


def read_aligned_window(path: str | Path, grid: Grid, window: Window, *, name: str,
                        categorical: bool) -> np.ndarray:
    """Band 1 of ``path`` on ``grid``'s ``window`` (float32, NaN = no data).

    Same resampling and nodata rules as :func:`metalsm.grid.read_aligned`; the
    destination is the window's sub-grid, so each window is resampled on its own.
    """
    sub = grid.window(window)
    with open_raster(path) as src:
        if grid.holds(src):
            values = src.read(1, window=window, masked=True).astype(np.float32).filled(np.nan)
        else:
            values = np.full(sub.shape, np.nan, dtype=np.float32)
            reproject(
                source=rasterio.band(src, 1), destination=values, src_nodata=src.nodata,
                dst_transform=sub.transform, dst_crs=sub.crs, dst_nodata=np.nan,
                resampling=resampling_onto(src, grid, categorical),
            )
        if src.nodata is not None and not np.isnan(src.nodata):
            values[values == np.float32(src.nodata)] = np.nan
    values[~np.isfinite(values) | (np.abs(values) > 1e30)] = np.nan
    if categorical:
        finite = values[np.isfinite(values)]
        if finite.size and not np.all(np.equal(np.mod(finite, 1), 0)):
            raise MetalsmInputError(
                f"categorical raster {path} (layer '{name}') holds non-integer values; "
                "categorical layers need integer class codes")
    return values


def _stack_window(sources: Sequence[LayerSource], grid: Grid, win: Window) -> np.ndarray:
    """All layers of one window, (n_layers, h, w) float32."""
    out = np.empty((len(sources), int(win.height), int(win.width)), dtype=np.float32)
    rows = slice(int(win.row_off), int(win.row_off + win.height))
    cols = slice(int(win.col_off), int(win.col_off + win.width))
    for i, source in enumerate(sources):
        if source.array is not None:
            out[i] = source.array[rows, cols]
        else:
            out[i] = read_aligned_window(source.path, grid, win, name=source.name,
                                         categorical=source.categorical)
    return out


def stack_profile(grid: Grid, count: int) -> dict:
    """The ``factors.tif`` profile of :meth:`FactorStack.write`."""
    profile = grid.profile(count=count, dtype="float32", nodata=np.nan)
    profile.update(interleave="pixel", predictor=3)
    return profile


def write_factor_stack(
    sources: Sequence[LayerSource],
    grid: Grid,
    out_path: str | Path,
    compute: Compute,
    *,
    chunk_size: int = 1024,
    class_names: dict[str, dict[int, str]] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Path:
    """Align every layer window by window and write ``factors.tif`` (atomically).

    Raises :class:`MetalsmInputError` naming the layer when a layer has no valid
    cell, or when no cell has a value in every layer.
    """
    sources = [replace(s, path=str(Path(s.path).absolute())) if s.path else s for s in sources]
    names = tuple(s.name for s in sources)
    class_names = class_names or {}
    finite = np.zeros(len(sources), dtype=np.int64)
    n_valid = 0
    with atomic_cog(out_path, overview_resampling="nearest") as tmp:
        # NUM_THREADS: deflate the tiles on every core (this process is the only writer)
        with rasterio.open(tmp, "w", **stack_profile(grid, len(names)),
                           NUM_THREADS="ALL_CPUS") as dst:
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(**{_CATEGORICAL_TAG: json.dumps(class_names)})

            def task(win):
                return _stack_window(sources, grid, win)

            windows = iter_windows(grid.height, grid.width, chunk_size)
            for win, values in compute.map_windows(task, windows):
                ok = np.isfinite(values)
                finite += ok.reshape(len(names), -1).sum(axis=1)
                n_valid += int(ok.all(axis=0).sum())
                with compute.lock(str(out_path)):
                    dst.write(values, window=win)
                if progress is not None:
                    progress(int(win.width * win.height))
        empty = [n for n, c in zip(names, finite, strict=True) if c == 0]
        if empty:
            source = sources[names.index(empty[0])]
            raise MetalsmInputError(
                f"raster {source.path or source.name} (layer '{empty[0]}') has no valid cells "
                "on the study grid (all nodata, or it does not overlap the reference grid)")
        if n_valid == 0:
            raise MetalsmInputError(
                "no cell has a value in every factor; valid cells per factor: "
                f"{dict(zip(names, finite.tolist(), strict=True))}")
    log.info("factor stack (chunked): %d factors, %d valid cells of %d", len(names), n_valid,
             grid.height * grid.width)
    return Path(out_path)


def build_factor_stack_chunked(
    config,
    out_path: str | Path,
    compute: Compute,
    *,
    chunk_size: int,
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    keep_layers: bool = False,
) -> Path:
    """``factors.tif`` of ``config``, equal to :func:`metalsm.stack.build_factor_stack`'s.

    Terrain factors and vector distances come from :mod:`metalsm.chunked_terrain`
    (one GeoTIFF per layer under ``work_dir``, default ``.layers`` beside the
    output, removed afterwards unless ``keep_layers``); thematic rasters are
    aligned window by window. Band order: terrain factors (config order), thematic
    rasters, vector distances.
    """
    import shutil

    from metalsm.chunked_terrain import derive_terrain_chunked, vector_distance_chunked
    from metalsm.stack import reference_grid

    step = progress or (lambda _m: None)
    out_path = Path(out_path)
    work = Path(work_dir) if work_dir is not None else out_path.parent / ".layers"
    work.mkdir(parents=True, exist_ok=True)
    grid = reference_grid(config)
    threshold = max(1, round(config.terrain.drainage_threshold_km2 * 1e6 / grid.cell_area))
    factors = tuple(dict.fromkeys(config.terrain.factors))
    step("deriving terrain factors (chunked)")
    paths = derive_terrain_chunked(str(Path(config.dem).absolute()), grid, factors, work,
                                   chunk_size=chunk_size, drainage_threshold_cells=threshold,
                                   scheduler=compute.client)  # None: local threads
    sources = [LayerSource(n, path=str(paths[n])) for n in factors]
    class_names: dict[str, dict[int, str]] = {}
    for raster in config.rasters:
        categorical = raster.kind == "categorical"
        step(f"aligning {raster.name}")
        open_raster(raster.path).close()  # named error for a missing/unreadable file now
        sources.append(LayerSource(raster.name, path=str(raster.path), categorical=categorical))
        if categorical:
            class_names[raster.name] = read_class_names(raster.path)
    for vector in config.vectors:
        step(f"distance to {vector.name}")
        path = vector_distance_chunked(vector.path, grid, work / f"distance_{vector.name}.tif",
                                       chunk_size=chunk_size, layer_name=vector.name,
                                       dem_path=config.dem)
        sources.append(LayerSource(vector.name, path=str(path)))
    step("writing factors.tif")
    try:
        return write_factor_stack(sources, grid, out_path, compute, chunk_size=chunk_size,
                                  class_names=class_names)
    finally:
        if not keep_layers and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


class FileFactorStack:
    """``factors.tif`` with the reading interface of :class:`metalsm.stack.FactorStack`
    (``grid``, ``names``, ``categorical``, ``valid``, ``layer``, ``sample``), for
    chunked runs: the stack itself stays on disk. ``valid`` is one byte per cell,
    built window by window; ``layer`` reads one band (4 bytes per cell) when a stage
    needs a whole layer (the slope rule, the DEM for scarp positives); ``sample``
    reads only the windows that hold the cells asked for.
    """

    def __init__(self, path: str | Path, chunk_size: int = 1024) -> None:
        self.path = Path(path).absolute()
        self.chunk_size = int(chunk_size)
        with open_raster(self.path) as src:
            self.names, self.class_names = stack_metadata(src)
            self.grid = Grid(src.crs, src.transform, src.height, src.width)
        self._valid: np.ndarray | None = None

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in self.class_names)

    @property
    def valid(self) -> np.ndarray:
        """Cells where every factor has a value (computed once, window by window)."""
        if self._valid is None:
            valid = np.zeros(self.grid.shape, dtype=bool)
            with open_raster(self.path) as src:
                for win in iter_windows(self.grid.height, self.grid.width, self.chunk_size):
                    block = src.read(window=win)
                    valid[win.row_off:win.row_off + win.height,
                          win.col_off:win.col_off + win.width] = np.isfinite(block).all(axis=0)
            self._valid = valid
        return self._valid

    def layer(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no factor '{name}' in {self.path}; factors: {', '.join(self.names)}")
        with open_raster(self.path) as src:
            return src.read(self.names.index(name) + 1).astype(np.float32, copy=False)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
        """Factor values at cells, one row per cell, one column per factor."""
        values = read_cells(self.path, rows, cols, chunk_size=self.chunk_size)
        return pd.DataFrame(values.astype(np.float32), columns=list(self.names))


# --------------------------------------------------------------------------- credibility


def _read_bands(path: str | Path, indexes: Sequence[int], win: Window) -> np.ndarray:
    with rasterio.open(path) as src:
        values = src.read(list(indexes), window=win, out_dtype=np.float32)
        nodata = src.nodata
    if nodata is not None and not np.isnan(nodata):
        values[values == nodata] = np.nan
    return values


def _valid_sample(factors_path, compute: Compute, chunk_size: int, max_cells: int, seed: int
                  ) -> FactorStack:
    """The valid cells in row-major order (a seeded subsample beyond ``max_cells``),
    as a one-row FactorStack: what :func:`metalsm.factors.stack_classes` needs for
    the FR class edges, in the same order as the in-memory ``values[valid]``."""
    with open_raster(factors_path) as src:
        names, class_names = stack_metadata(src)
        grid = Grid(src.crs, src.transform, src.height, src.width)
    rate = min(1.0, max_cells / (grid.height * grid.width))
    indexes = list(range(1, len(names) + 1))

    def task(win):
        values = _read_bands(factors_path, indexes, win).reshape(len(names), -1)
        keep = np.isfinite(values).all(axis=0)
        if rate < 1.0:
            rng = np.random.default_rng([seed, int(win.row_off), int(win.col_off)])
            keep &= rng.random(keep.size) < rate
        return values[:, keep]

    strips = _row_strips(grid, chunk_size)
    parts = [v for _, v in sorted(compute.map_windows(task, strips),
                                  key=lambda item: item[0].row_off)]
    values = np.concatenate(parts, axis=1)[:, None, :]
    sample_grid = Grid(grid.crs, grid.transform, 1, values.shape[2])
    return FactorStack(sample_grid, names, values, class_names)


def _row_strips(grid: Grid, chunk_size: int) -> list[Window]:
    """Full-width strips of about ``chunk_size**2`` cells (row-major order of cells)."""
    rows = max(1, chunk_size * chunk_size // max(grid.width, 1))
    return [Window(0, r, grid.width, min(rows, grid.height - r))
            for r in range(0, grid.height, rows)]


def fit_membership_chunked(
    factors_path: str | Path,
    positives: tuple[np.ndarray, np.ndarray],
    compute: Compute,
    settings=None,
    classes_settings=None,
    *,
    chunk_size: int = 1024,
    class_sample: int | None = None,
):
    """:func:`metalsm.credibility.fit_membership` over ``factors.tif`` without loading it.

    The FR class edges come from the valid cells (all of them up to
    ``class_sample`` cells, default :data:`CLASS_SAMPLE_CELLS`, which makes the result
    equal to the in-memory one; a seeded subsample beyond), the class histograms of
    all cells and of landslide cells are a sum over windows, and the rescaling
    extremes a min/max over windows.
    """
    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    from metalsm.config import CredibilityConfig, FactorSelectionConfig
    from metalsm.credibility import MembershipModel, membership_from_fr_tables
    from metalsm.factors import fr_table_from_counts, stack_classes

    settings = settings or CredibilityConfig()
    classes_settings = classes_settings or FactorSelectionConfig()
    with open_raster(factors_path) as src:
        names, _ = stack_metadata(src)
        grid = Grid(src.crs, src.transform, src.height, src.width)
    factors = tuple(settings.factors) or names
    unknown = [f for f in factors if f not in names]
    if unknown:
        raise MetalsmInputError(
            f"credibility.factors names {unknown} not in {factors_path}; "
            f"factors: {', '.join(names)}")
    sample = _valid_sample(factors_path, compute, chunk_size,
                           class_sample or CLASS_SAMPLE_CELLS, classes_settings.seed)
    classes = stack_classes(sample, classes_settings, factors)
    rows, cols = (np.asarray(a, dtype=np.int64) for a in positives)
    all_idx = [names.index(n) + 1 for n in names]
    f_idx = [names.index(f) for f in factors]

    def histograms(win):
        values = _read_bands(factors_path, all_idx, win)
        valid = np.isfinite(values).all(axis=0)
        slide = np.zeros(valid.shape, dtype=bool)
        r0, c0 = int(win.row_off), int(win.col_off)
        inside = ((rows >= r0) & (rows < r0 + win.height) & (cols >= c0)
                  & (cols < c0 + win.width))
        slide[rows[inside] - r0, cols[inside] - c0] = True
        slide &= valid
        out = []
        for name, i in zip(factors, f_idx, strict=True):
            cls = classes[name]
            idx = cls.index(values[i][valid])
            n = len(cls.labels)
            ok = idx >= 0
            out.append((np.bincount(idx[ok], minlength=n),
                        np.bincount(idx[ok & slide[valid]], minlength=n)))
        return out

    area = [None] * len(factors)
    slides = [None] * len(factors)
    for _, hist in compute.map_windows(histograms, iter_windows(grid.height, grid.width,
                                                                chunk_size)):
        for k, (a, s) in enumerate(hist):
            area[k] = a if area[k] is None else area[k] + a
            slides[k] = s if slides[k] is None else slides[k] + s
    if not slides or int(slides[0].sum()) == 0:
        raise MetalsmInputError("no training landslide cell lies on a valid cell of the stack")
    model = membership_from_fr_tables(
        [fr_table_from_counts(classes[name], area[k], slides[k])
         for k, name in enumerate(factors)],
        tuple(classes[f] for f in factors), settings)
    if not settings.rescale:
        return model

    def extremes(win):
        values = _read_bands(factors_path, all_idx, win)
        mu = model.raw_membership(values[f_idx].astype(np.float32))
        mu = mu[np.isfinite(mu)]
        return (float(mu.min()), float(mu.max())) if mu.size else (math.inf, -math.inf)

    lo, hi = math.inf, -math.inf
    for _, (a, b) in compute.map_windows(extremes, iter_windows(grid.height, grid.width,
                                                                chunk_size)):
        lo, hi = min(lo, a), max(hi, b)
    if not hi > lo:
        return model
    return MembershipModel(model.factors, model.classes, model.membership, model.weights,
                           model.combine, model.fr_tables, (lo, hi))


def write_credibility_chunked(
    factors_path: str | Path,
    model,
    out_path: str | Path,
    compute: Compute,
    *,
    chunk_size: int = 1024,
) -> Path:
    """``credibility.tif`` window by window from a fitted membership model."""
    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    with open_raster(factors_path) as src:
        names, _ = stack_metadata(src)
        grid = Grid(src.crs, src.transform, src.height, src.width)
    all_idx = list(range(1, len(names) + 1))
    f_idx = [names.index(f) for f in model.factors]

    def task(win):
        values = _read_bands(factors_path, all_idx, win)
        valid = np.isfinite(values).all(axis=0)
        cred = model.credibility_of(values[f_idx])
        return np.where(valid, cred, np.nan).astype(np.float32)

    profile = grid.profile(dtype="float32", nodata=np.nan, predictor=3)
    with atomic_cog(out_path, overview_resampling="average") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for win, cred in compute.map_windows(task, iter_windows(grid.height, grid.width,
                                                                    chunk_size)):
                with compute.lock(str(out_path)):
                    dst.write(cred, 1, window=win)
            dst.set_band_description(1, "credibility as a non-landslide sample (0-1)")
    write_credibility_style(out_path)
    return Path(out_path)


# --------------------------------------------------------------------------- segmentation


@dataclass(frozen=True)
class CoarseBlocks:
    """Blocks found on a coarse grid and carried back to the full grid (``blocks.tif``)."""

    blocks: Any  # segmentation.Blocks on the coarse grid
    factor: int
    full_grid: Grid
    path: Path

    def block_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Block id of full-grid cells (the coarse cell containing them; -1 outside)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        return self.blocks.block_of(rows // self.factor, cols // self.factor)


def coarse_factor(grid: Grid, *, resolution_m: float | None = None,
                  max_cells: int = 4_000_000) -> int:
    """Decimation factor: from a target resolution, else the least keeping <= ``max_cells``."""
    if resolution_m is not None:
        if resolution_m < grid.cell_size:
            raise MetalsmInputError(
                f"blocks.coarse_resolution_m = {resolution_m} is finer than the grid's "
                f"{grid.cell_size:g}")
        return max(1, int(round(resolution_m / grid.cell_size)))
    return max(1, math.ceil(math.sqrt(grid.height * grid.width / max_cells)))


def _block_reduce(values: np.ndarray, factor: int, categorical: np.ndarray) -> np.ndarray:
    """``(n, h, w)`` full cells (h, w multiples of ``factor``) to ``(n, h/f, w/f)``: the mean
    of the finite cells (continuous bands) or their most frequent code (categorical)."""
    n, h, w = values.shape
    blocks = values.reshape(n, h // factor, factor, w // factor, factor)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(2, 4))
    out = np.full((n, h // factor, w // factor), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, blocks, 0).sum(axis=(2, 4), dtype=np.float64) / count
    cont = ~categorical
    out[cont] = np.where(count[cont] > 0, mean[cont], np.nan)
    for b in np.flatnonzero(categorical):  # a loop over class codes, not cells
        band = blocks[b]
        best = np.zeros(out.shape[1:], dtype=np.int64)
        for code in np.unique(band[np.isfinite(band)]):
            hits = (band == code).sum(axis=(1, 3))
            better = hits > best
            out[b][better] = code
            best[better] = hits[better]
    return out


def read_coarse_stack(factors_path: str | Path, factor: int, compute: Compute | None = None,
                      chunk_size: int = 1024) -> FactorStack:
    """``factors.tif`` decimated by ``factor``: per coarse cell the mean of its finite full
    cells, or their most frequent class for categorical bands.

    Coarse cell (i, j) covers full cells [i*f, (i+1)*f) x [j*f, (j+1)*f) (the last row
    and column of coarse cells may reach past the raster edge). Read in full-width
    strips of whole coarse rows, all bands at once (``factors.tif`` is pixel-interleaved).
    """
    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    with open_raster(factors_path) as src:
        names, class_names = stack_metadata(src)
        height, width = src.height, src.width
        h, w = math.ceil(height / factor), math.ceil(width / factor)
        transform = src.transform * src.transform.scale(factor, factor)
        grid = Grid(src.crs, transform, h, w)
    categorical = np.array([n in class_names for n in names])
    rows_per = max(1, (chunk_size * chunk_size) // max(width, 1) // factor) * factor
    strips = [Window(0, r, width, min(rows_per, height - r)) for r in range(0, height, rows_per)]

    def task(win):
        values = _read_bands(factors_path, list(range(1, len(names) + 1)), win)
        padded = np.full((len(names), math.ceil(win.height / factor) * factor, w * factor),
                         np.nan, dtype=np.float32)
        padded[:, : values.shape[1], : values.shape[2]] = values
        return _block_reduce(padded, factor, categorical)

    values = np.full((len(names), h, w), np.nan, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        if compute is None:
            compute = stack.enter_context(compute_context(None))
        for win, coarse in compute.map_windows(task, strips):
            r0 = int(win.row_off) // factor
            values[:, r0 : r0 + coarse.shape[1]] = coarse
    return FactorStack(grid, names, values, class_names)


def segment_coarse(
    factors_path: str | Path,
    settings,
    out_path: str | Path,
    compute: Compute,
    *,
    factor: int,
    weights: dict[str, float] | None = None,
    chunk_size: int = 1024,
) -> CoarseBlocks:
    """Segment ``factors.tif`` on a grid ``factor`` times coarser and write ``blocks.tif``.

    ``settings`` is a ``BlocksConfig``. Each full cell takes the block of the coarse
    cell containing it (nearest), and -1 where any factor is missing at full resolution.
    """
    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    from metalsm.segmentation import segment_raster

    coarse = read_coarse_stack(factors_path, factor, compute, chunk_size)
    blocks = segment_raster(coarse, settings.n_blocks, settings.compactness, weights=weights,
                            iterations=settings.iterations,
                            min_size_fraction=settings.min_size_fraction, seed=settings.seed)
    labels = blocks.labels
    with open_raster(factors_path) as src:
        grid = Grid(src.crs, src.transform, src.height, src.width)
        count = src.count

    def task(win):
        values = _read_bands(factors_path, list(range(1, count + 1)), win)
        rows = np.arange(int(win.row_off), int(win.row_off + win.height)) // factor
        cols = np.arange(int(win.col_off), int(win.col_off + win.width)) // factor
        ids = labels[rows[:, None], cols[None, :]].astype(np.int32)
        ids[~np.isfinite(values).all(axis=0)] = -1
        return ids

    profile = grid.profile(dtype="int32", nodata=-1)
    with atomic_cog(out_path, overview_resampling="nearest") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for win, ids in compute.map_windows(task, iter_windows(grid.height, grid.width,
                                                                   chunk_size)):
                with compute.lock(str(out_path)):
                    dst.write(ids, 1, window=win)
    write_blocks_style(out_path, range(blocks.n_blocks))
    return CoarseBlocks(blocks, factor, grid, Path(out_path))


def read_cells(path: str | Path, rows: np.ndarray, cols: np.ndarray, *,
               chunk_size: int = 1024, band_indexes: Sequence[int] | None = None
               ) -> np.ndarray:
    """Values of the bands of ``path`` at cells ``(rows, cols)``, ``(n, n_bands)`` float64,
    read window by window (one read per window holding at least one cell)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    with open_raster(path) as src:
        indexes = list(band_indexes or range(1, src.count + 1))
        out = np.full((rows.size, len(indexes)), np.nan)
        key = (rows // chunk_size) * (src.width // chunk_size + 1) + cols // chunk_size
        order = np.argsort(key, kind="stable")
        uniq, starts = np.unique(key[order], return_index=True)
        bounds = np.append(starts, order.size)
        for k in range(uniq.size):
            sel = order[bounds[k]:bounds[k + 1]]
            r0, c0 = rows[sel].min(), cols[sel].min()
            win = Window(c0, r0, cols[sel].max() - c0 + 1, rows[sel].max() - r0 + 1)
            block = src.read(indexes, window=win, out_dtype=np.float64)
            out[sel] = block[:, rows[sel] - r0, cols[sel] - c0].T
        if src.nodata is not None and not np.isnan(src.nodata):
            out[out == src.nodata] = np.nan
    return out


def segment_on_coarse_grid(factors_path: str | Path, settings, weights=None, *,
                           compute: Compute | None = None, chunk_size: int = 1024):
    """``[blocks] coarse_resolution_m`` in a run: :func:`segment_coarse`, then the block
    ids on the full grid as a :class:`metalsm.segmentation.Blocks` (centres' row and
    column in full-grid cells), so the block outputs and tasks follow unchanged."""
    from dataclasses import replace

    factors_path = Path(factors_path)
    grid = Grid.from_raster(factors_path)
    factor = coarse_factor(grid, resolution_m=settings.coarse_resolution_m)
    with contextlib.ExitStack() as stack:
        if compute is None:
            compute = stack.enter_context(compute_context(None))
        result = segment_coarse(factors_path, settings, factors_path.parent / "blocks.tif",
                                compute, factor=factor, weights=weights,
                                chunk_size=chunk_size)
    with rasterio.open(result.path) as src:
        labels = src.read(1)
    centres = result.blocks.centres.copy()
    centres[:, :2] = centres[:, :2] * factor + (factor - 1) / 2
    meta = {**result.blocks.meta, "coarse_factor": factor,
            "coarse_resolution_m": factor * grid.cell_size}
    return replace(result.blocks, labels=labels, centres=centres, grid=grid,
                   step=result.blocks.step * factor, meta=meta)
