"""Chunked (out-of-core, Dask) processing equals the in-memory path on real Kaghan data."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import write_config
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from metalsm import mapping
from metalsm.blocks import _segmentation as segmentation
from metalsm.cli import app
from metalsm.config import BlocksConfig, load_config
from metalsm.errors import MetalsmInputError
from metalsm.pipeline import run_pipeline
from metalsm.raster import cog_problems, iter_windows, read_aligned_window, read_cells
from metalsm.samples import credibility_map, fit_membership, write_credibility
from metalsm.scale import choose_plan, compute_context
from metalsm.stack import FactorStack, FileFactorStack

FAST = {"model": 'names = ["lr"]\nmap_model = "lr"\nseed = 7',
        "validation": 'n_folds = 2\nspatial_method = "kmeans"\nseed = 7',
        "sampling": 'method = "credibility"\nratio = 1.0\nbuffer_m = 60.0\nseed = 7'}


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, src.tags(), src.profile


@pytest.fixture(scope="module")
def runs(kaghan_crop, kaghan, tmp_path_factory):
    """The crop mapped in memory (API) and chunked in 128-cell windows (CLI)."""
    base = tmp_path_factory.mktemp("chunked")
    config_path = write_config(base / "crop.toml", kaghan_crop, kaghan, **FAST)
    run_pipeline(load_config(config_path), base / "memory", show_progress=False)
    result = CliRunner().invoke(app, ["run", str(config_path), "--out", str(base / "chunked"),
                                      "--chunk-size", "128", "-q"])
    assert result.exit_code == 0, result.output
    return config_path, base / "memory", base / "chunked"


def test_chunked_run_equals_in_memory_run(runs):
    _, memory, chunked_dir = runs
    for name in ("factors.tif", "susceptibility.tif", "zones.tif"):
        a, desc_a, tags_a, prof_a = _read(memory / name)
        b, desc_b, tags_b, prof_b = _read(chunked_dir / name)
        assert a.shape == b.shape and desc_a == desc_b and tags_a == tags_b, name
        assert prof_a["dtype"] == prof_b["dtype"] and prof_a["transform"] == prof_b["transform"]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b)) if a.dtype.kind == "f" else None
        assert np.nanmax(np.abs(a.astype(np.float64) - b)) <= 1e-6, name
    for path in chunked_dir.glob("*.tif"):
        assert cog_problems(path) == [], path.name
    pd.testing.assert_frame_equal(pd.read_csv(memory / "samples.csv"),
                                  pd.read_csv(chunked_dir / "samples.csv"))
    assert not (chunked_dir / ".layers").exists()  # per-layer intermediates removed
    assert (chunked_dir / "credibility.tif").exists()  # negatives drawn from it, as in memory
    compute = json.loads((chunked_dir / "metrics.json").read_text())["compute"]
    assert compute["chunked"] and compute["chunk_size"] == 128
    assert compute["scheduler"] == "threads"


def _lr(run_dir):
    samples = pd.read_csv(run_dir / "samples.csv")
    with rasterio.open(run_dir / "factors.tif") as src:
        names = list(src.descriptions)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    return model.fit(samples[names], samples["label"]), names


def test_prediction_through_a_local_cluster_equals_serial(runs, tmp_path):
    from distributed import Client, LocalCluster

    config_path, memory, _ = runs
    model, names = _lr(memory)
    serial = mapping.predict_raster(model, memory / "factors.tif", tmp_path / "serial.tif",
                                    feature_names=names, window_size=100)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with compute_context(cluster.scheduler_address) as compute:
            assert compute.scheduler == "distributed"
            done = []
            remote = mapping.predict_raster(
                model, memory / "factors.tif", tmp_path / "remote.tif", feature_names=names,
                window_size=100, compute=compute, progress=lambda n, total: done.append(total))
        assert client.status == "running"
        # a whole chunked run sent to the cluster (--scheduler ADDRESS) maps the same
        run_pipeline(load_config(config_path), tmp_path / "run", show_progress=False,
                     chunk_size=128, scheduler=cluster.scheduler_address)
    for name in ("factors.tif", "susceptibility.tif"):
        a, b = _read(memory / name)[0], _read(tmp_path / "run" / name)[0]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-6, name
    a, b = _read(serial)[0], _read(remote)[0]
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= 1e-6
    assert done[-1] == int(np.isfinite(a).sum())


class _Encoder:
    def __init__(self, names):
        self.factor_names = names

    def transform(self, cells):
        return cells


class _BlockModels:
    """P = logistic of the block id plus the first feature, scaled: differs per block.

    Not thread-safe on purpose (state on ``self`` across a sleep), like PyTorch's
    ``functional_call`` swapping parameters on a shared module.
    """

    def predict_proba(self, features, ids):
        self.ids = ids
        time.sleep(0.002)
        return 1 / (1 + np.exp(-(self.ids * 0.3 + features[:, 0] / 1000 - 3)))


@pytest.mark.parametrize("private", [False, True])
def test_thread_tasks_share_what_they_capture_unless_private(private):
    """Terrain windows capture the whole grid's upstream counts: on local threads they
    must read that one array, not a copy per thread (1.6 GB each at 400 M cells); a
    model map asks for private copies because its models need not be thread-safe."""
    counts = np.arange(1000, dtype=np.uint32)

    def task(win):
        return int(counts[win.col_off]), counts.__array_interface__["data"][0]

    windows = list(iter_windows((10, 1000), 100))
    with compute_context(None, num_workers=2) as compute:
        results = dict(compute.map_windows(task, windows, private=private))
    assert sorted(v for v, _ in results.values()) == [w.col_off for w in windows]
    shared = {address == counts.__array_interface__["data"][0] for _, address in results.values()}
    assert shared == ({False} if private else {True})


def test_blockwise_prediction_on_dask_threads_equals_serial(runs, tmp_path):
    _, memory, _ = runs
    with rasterio.open(memory / "factors.tif") as src:
        names = list(src.descriptions)
        profile = src.profile
        valid = np.isfinite(src.read()).all(axis=0)
    ids = (np.arange(valid.size).reshape(valid.shape) // 5000).astype(np.int32)
    ids[~valid] = -1
    profile.update(count=1, dtype="int32", nodata=-1)
    with rasterio.open(tmp_path / "blocks.tif", "w", **profile) as dst:
        dst.write(ids, 1)
    args = (_BlockModels(), _Encoder(names), memory / "factors.tif", tmp_path / "blocks.tif")
    serial = mapping.predict_blockwise_raster(*args, tmp_path / "s.tif", window_size=64)
    with compute_context(None, num_workers=2) as compute:
        threaded = mapping.predict_blockwise_raster(*args, tmp_path / "t.tif", window_size=64,
                                                    compute=compute)
    a, b = _read(serial)[0], _read(threaded)[0]
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= 1e-6


def test_chunked_credibility_equals_in_memory(runs, tmp_path):
    config_path, memory, _ = runs
    config = load_config(config_path)
    stack = FactorStack.read(memory / "factors.tif")
    samples = pd.read_csv(memory / "samples.csv")
    pos = samples[samples.label == 1]
    positives = (pos["row"].to_numpy(), pos["col"].to_numpy())
    expected, model = credibility_map(stack, positives, config.credibility,
                                      config.factor_selection)
    on_disk = FileFactorStack(memory / "factors.tif", chunk_size=100)
    with compute_context(None, num_workers=2) as compute:
        fitted = fit_membership(on_disk, positives, config.credibility,
                                config.factor_selection, compute=compute, chunk_size=100)
        mapped, _ = credibility_map(on_disk, positives, model=fitted, compute=compute,
                                    chunk_size=100)
    path = write_credibility(mapped, on_disk.grid, tmp_path / "credibility.tif")
    pd.testing.assert_frame_equal(model.fr_tables, fitted.fr_tables)
    for got in (_read(path)[0][0], _read(runs[2] / "credibility.tif")[0][0]):
        np.testing.assert_array_equal(np.isnan(expected), np.isnan(got))
        assert np.nanmax(np.abs(expected - got)) <= 1e-6


def test_segmentation_on_a_coarse_grid(runs, tmp_path):
    _, memory, _ = runs
    settings = BlocksConfig(n_blocks=8, compactness=0.5, iterations=3)
    with compute_context(None, num_workers=2) as compute:
        result = segmentation.segment_coarse(memory / "factors.tif", settings,
                                             tmp_path / "blocks.tif", compute, factor=4,
                                             chunk_size=100)
    labels = _read(result.path)[0][0]
    valid = np.isfinite(_read(memory / "factors.tif")[0]).all(axis=0)
    n = result.blocks.n_blocks
    assert 4 <= n <= 16
    assert set(np.unique(labels[valid])) == set(range(n))  # every block present
    assert (labels[~valid] == -1).all()
    for block in range(n):  # contiguous-ish: one component holds most of the block
        comp, k = ndimage.label(labels == block)
        sizes = np.bincount(comp.ravel())[1:]
        assert sizes.max() >= 0.8 * sizes.sum()
    samples = pd.read_csv(memory / "samples.csv")
    rows, cols = samples["row"].to_numpy(), samples["col"].to_numpy()
    np.testing.assert_array_equal(result.block_of(rows, cols)[labels[rows, cols] >= 0],
                                  labels[rows, cols][labels[rows, cols] >= 0])
    read = read_cells(result.path, rows, cols, chunk_size=64)[:, 0]
    np.testing.assert_array_equal(read, labels[rows, cols])


def test_choice_of_path(runs, tmp_path):
    config_path, _, _ = runs
    config = load_config(config_path)
    assert choose_plan(config).chunked is False  # the crop fits in memory
    assert choose_plan(config, chunk_size=256).chunked is True
    assert choose_plan(config, scheduler="tcp://10.0.0.1:8786").chunked is True
    text = config_path.read_text() + "\n[compute]\nmemory_limit_gb = 0.001\n"
    (tmp_path / "small.toml").write_text(text)
    plan = choose_plan(load_config(tmp_path / "small.toml"))
    assert plan.chunked and "available" in plan.why
    (tmp_path / "bad.toml").write_text(config_path.read_text() + "\n[compute]\nchunk_size = 4\n")
    with pytest.raises(MetalsmInputError, match="compute.chunk_size"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(MetalsmInputError, match="scheduler"):
        with compute_context("not an address"):
            pass


def test_coarse_segmentation_gives_full_grid_blocks_for_a_run(runs, tmp_path):
    import shutil

    _, memory, _ = runs
    shutil.copyfile(memory / "factors.tif", tmp_path / "factors.tif")
    settings = BlocksConfig(n_blocks=6, iterations=3, coarse_resolution_m=90.0)
    blocks = segmentation.segment_on_coarse_grid(tmp_path / "factors.tif", settings)
    labels = _read(tmp_path / "blocks.tif")[0][0]
    assert blocks.labels.shape == labels.shape == blocks.grid.shape
    np.testing.assert_array_equal(blocks.labels, labels)
    assert blocks.meta["coarse_factor"] == 3
    assert blocks.sizes().min() > 0 and blocks.centres.shape[0] == blocks.n_blocks
    assert (blocks.centres[:, 0] < labels.shape[0]).all()
    assert (blocks.centres[:, 1] < labels.shape[1]).all()


def test_file_factor_stack_reads_what_the_in_memory_stack_holds(runs):
    """Chunked runs sample from factors.tif on disk; values, mask and layers must be the
    in-memory stack's, with a window size that cuts the grid unevenly."""
    _, memory, _ = runs
    in_memory = FactorStack.read(memory / "factors.tif")
    on_disk = FileFactorStack(memory / "factors.tif", chunk_size=37)
    assert on_disk.names == in_memory.names and on_disk.categorical == in_memory.categorical
    np.testing.assert_array_equal(on_disk.valid, in_memory.valid)
    np.testing.assert_array_equal(on_disk.layer("slope"), in_memory.layer("slope"))
    rng = np.random.default_rng(0)
    rows = rng.integers(0, in_memory.grid.height, 500)
    cols = rng.integers(0, in_memory.grid.width, 500)
    pd.testing.assert_frame_equal(on_disk.sample(rows, cols), in_memory.sample(rows, cols))


def test_chunked_alignment_of_a_geographic_categorical_raster(kaghan_crop,
                                                               landcover_geographic):
    """Window by window, land cover in EPSG:4326 is aligned by nearest neighbour like the
    in-memory path: >= 98 % of cells keep their original class, and the two paths agree
    but for near-ties of nearest neighbour (GDAL rounds a window's offsets its own way)."""
    from metalsm.raster import Grid, read_aligned

    grid = Grid.from_raster(kaghan_crop / "AW3D30.tif")
    with rasterio.open(kaghan_crop / "Landcover.tif") as src:
        original = src.read(1)
        nodata = src.nodata
    windowed = np.full(grid.shape, np.nan, dtype=np.float32)
    for win in iter_windows(grid.shape, 64):
        rows = slice(int(win.row_off), int(win.row_off + win.height))
        cols = slice(int(win.col_off), int(win.col_off + win.width))
        windowed[rows, cols] = read_aligned_window(
            landcover_geographic, grid, win, name="landcover", categorical=True)
    both = np.isfinite(windowed) & (original != nodata)
    assert both.mean() > 0.95
    assert (windowed[both] == original[both]).mean() >= 0.98
    memory = read_aligned(landcover_geographic, grid, name="landcover", categorical=True).values
    same = np.isfinite(windowed) & np.isfinite(memory)
    assert (windowed[same] == memory[same]).mean() >= 0.99
