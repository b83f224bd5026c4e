"""Where window tasks run, and the one place that chooses the path and the window size.

* :class:`Compute` — the one executor of window tasks: serially in this process
  (``Compute()``, what a whole-grid, one-window run uses), on Dask's local threads,
  or on an existing ``dask.distributed`` cluster given its scheduler address
  (``tcp://host:8786``). No networking or job system of our own: start the cluster
  with dask-jobqueue, dask-kubernetes or ``dask scheduler``.
* :func:`compute_context` — a :class:`Compute` for a run (the client it makes is
  closed on exit).
* :func:`choose_plan` — whether a run holds the factor stack in memory (one window)
  or on disk (windows of ``chunk_size``), and why (``--chunk-size``, ``--scheduler``,
  ``[compute]``, or the estimated stack size against free memory).

**How output GeoTIFFs are written.** Workers compute windows; only the process that
called :meth:`Compute.map_windows` (the client) writes them, into one open dataset
(:func:`metalsm.raster.windowed_geotiff`), under :meth:`Compute.lock` (a
``distributed.Lock`` when a client is active, a ``threading.Lock`` otherwise).
Workers may be other processes on other machines: having each of them open a
deflate-compressed tiled GeoTIFF in ``r+`` mode would rewrite shared compressed tiles
from several processes (a window smaller than a tile touches a tile another window
also writes; GDAL appends the recompressed tile and the loser's half is lost unless
every read-modify-write of the tile is serialised) and needs the output on a
filesystem every worker can write. Gathering the window arrays to the client keeps
one writer, the atomic temporary-then-rename of :mod:`metalsm.atomic`, and costs only
the window's bytes over the network. Inputs (``factors.tif``, source rasters) are
read by the workers, so they must sit on a filesystem every worker sees at the same
path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rasterio.windows import Window

from metalsm.errors import MetalsmInputError
from metalsm.raster import gdal_cache

#: Share of available memory the in-memory stack may take before runs go chunked.
DEFAULT_MEMORY_FRACTION = 0.25
#: Window edge (cells) of chunked runs when none is given.
DEFAULT_CHUNK_SIZE = 1024

__all__ = ["Compute", "Plan", "choose_plan", "compute_context", "estimated_stack_bytes"]


@dataclass
class Compute:
    """Where window tasks run: ``scheduler`` ``"serial"`` (this process, in order),
    ``"threads"`` (Dask's local threads) or ``"distributed"`` (``client``'s cluster)."""

    client: Any = None
    num_workers: int | None = None
    max_in_flight: int = 8
    threads: bool = False
    _locks: dict[str, Any] = field(default_factory=dict)

    @property
    def scheduler(self) -> str:
        if self.client is not None:
            return "distributed"
        return "threads" if self.threads else "serial"

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

    def map_windows(self, func: Callable[[Window], Any], windows: Iterable[Window],
                    *, private: bool = False) -> Iterator[tuple[Window, Any]]:
        """``(window, func(window))`` for every window: in window order when serial, in
        completion order otherwise.

        At most ``max_in_flight`` windows are computed or held at once, so memory
        stays bounded whatever the number of windows. ``func`` must be picklable
        (cloudpickle) when the client's workers are other processes.
        ``private``: on local threads, each thread runs its own copy of ``func``, for
        tasks whose captured objects are not thread-safe (a model). Off by default:
        a copy costs what ``func`` captures once per thread, and the terrain windows
        capture the whole grid's upstream counts (1.6 GB at 400 M cells).
        """
        windows = iter(windows)
        task = _with_gdal_cache(func)
        if self.client is not None:
            yield from self._map_distributed(task, windows)
            return
        if not self.threads:
            for win in windows:
                yield win, task(win)
            return
        import dask

        own = _per_thread_copy(task) if private else task
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
    def task(win):  # workers have no outer rasterio.Env
        with gdal_cache():
            return func(win)

    return task


@contextlib.contextmanager
def compute_context(scheduler: Any = None, *, num_workers: int | None = None,
                    max_in_flight: int | None = None) -> Iterator[Compute]:
    """A :class:`Compute` for the run: serial, local threads, or the cluster at ``scheduler``.

    ``scheduler`` is ``"serial"``, None/``"threads"`` (Dask's local threaded
    scheduler), the address of a running ``dask.distributed`` scheduler
    (``tcp://host:8786``), or an existing ``distributed.Client``.
    """
    if scheduler == "serial":
        yield Compute()
        return
    if scheduler is None or scheduler in ("threads", "local"):
        workers = num_workers or os.cpu_count() or 1
        yield Compute(None, workers, max_in_flight or max(2, 2 * workers), threads=True)
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
    from metalsm.raster import reference_grid

    grid = reference_grid(config)
    n_factors = len(config.terrain.factors) + len(config.rasters) + len(config.vectors)
    # the in-memory path also holds the DEM and terrain temporaries: count ~2x
    return int(2 * 4 * grid.height * grid.width * max(1, n_factors))


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class Plan:
    """How a command runs: ``chunked`` (the stack stays on disk, windows of
    ``chunk_size`` cells) or not (one window, the stack in memory); ``scheduler`` for
    :func:`compute_context`; ``why`` for the log and the manifest."""

    chunked: bool
    why: str
    chunk_size: int
    scheduler: str | None

    def compute(self) -> contextlib.AbstractContextManager[Compute]:
        """The executor of this plan (serial when in memory)."""
        return compute_context(self.scheduler if self.chunked else "serial")

    @property
    def stage_chunk_size(self) -> int | None:
        """The ``chunk_size`` a stage takes: the chunk edge, or None in memory (one window)."""
        return self.chunk_size if self.chunked else None

    def window_size(self, output_window: int) -> int:
        """Prediction windows: never larger than ``[output] window_size`` (features of a
        window take ~0.5 kB per cell), smaller when the chunks are."""
        return min(self.chunk_size, output_window) if self.chunked else output_window


def choose_plan(config, *, chunk_size: int | None = None, scheduler: str | None = None
                ) -> Plan:
    """The one choice of path and window size for every command.

    ``chunk_size``/``scheduler`` (command line) win over ``[compute]``; with neither,
    the run is chunked when the estimated stack exceeds ``memory_fraction`` of
    the available memory (or of ``memory_limit_gb`` when set).
    """
    settings = getattr(config, "compute", None)
    asked_chunk = chunk_size or (settings.chunk_size if settings else None)
    scheduler = scheduler or (settings.scheduler if settings else None)
    chunk = asked_chunk or DEFAULT_CHUNK_SIZE

    def plan(chunked: bool, why: str) -> Plan:
        return Plan(chunked, why, chunk, scheduler)

    if asked_chunk:
        return plan(True, f"chunk size {asked_chunk} requested")
    if scheduler and scheduler not in ("threads", "local"):
        return plan(True, f"scheduler {scheduler} requested")
    if config.dem is None:
        return plan(False, "sample-table study area")
    need = estimated_stack_bytes(config)
    limit_gb = settings.memory_limit_gb if settings else None
    have = int(limit_gb * 1e9) if limit_gb else available_memory_bytes()
    fraction = settings.memory_fraction if settings else DEFAULT_MEMORY_FRACTION
    if need > fraction * have:
        return plan(True, f"estimated stack {need / 1e9:.1f} GB > {fraction:g} x "
                          f"{have / 1e9:.1f} GB available")
    return plan(False, f"estimated stack {need / 1e9:.2f} GB fits in memory")
