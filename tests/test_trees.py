"""Compiled tree ensembles (models/_trees.py packed walk, models/_native.py machine code)
against the libraries' own predict, on real Kaghan cells: a crop's DEM-derived factors,
geology and land cover, landslide polygons."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import rasterio

from metalsm.inputs import landslide_mask, read_inventory
from metalsm.mapping import predict_raster
from metalsm.models import _native, make_model
from metalsm.models._native import NativeTrees, compile_native
from metalsm.models._trees import CompiledTrees, compile_forest, compile_lightgbm
from metalsm.raster import Grid, read_aligned
from metalsm.stack import FactorStack
from metalsm.terrain import aspect, slope_degrees

NAMES = ["elevation", "slope", "aspect_sin", "aspect_cos", "geology", "landcover"]
CATEGORICAL = ["geology", "landcover"]
SMALL = {"rf": {"n_estimators": 60}, "fr-rf": {"n_estimators": 60},
         "lightgbm": {"n_estimators": 120}}


@pytest.fixture(scope="module")
def crop(kaghan, kaghan_crop, tmp_path_factory):
    """The crop's factor stack on disk, a balanced sample table and all valid cells."""
    grid = Grid.from_raster(kaghan_crop / "AW3D30.tif")
    dem = read_aligned(kaghan_crop / "AW3D30.tif", grid, name="elevation", categorical=False)
    geology = read_aligned(kaghan_crop / "Geology.tif", grid, name="geology", categorical=True)
    cover = read_aligned(kaghan_crop / "Landcover.tif", grid, name="landcover", categorical=True)
    sin, cos = aspect(dem.values, grid.cell_size)
    values = np.stack([dem.values, slope_degrees(dem.values, grid.cell_size), sin, cos,
                       geology.values, cover.values])
    stack = FactorStack(grid, tuple(NAMES), values,
                        {"geology": geology.class_names, "landcover": cover.class_names})
    path = stack.write(tmp_path_factory.mktemp("trees") / "factors.tif")

    valid = stack.valid
    slides = landslide_mask(read_inventory(kaghan / "landslides.shp", grid), grid) & valid
    rng = np.random.default_rng(3)
    pos = rng.permutation(np.flatnonzero(slides))[:1500]
    neg = rng.choice(np.flatnonzero(valid & ~slides), pos.size, replace=False)
    picked = np.concatenate([pos, neg])
    rows, cols = np.unravel_index(picked, grid.shape)
    table = stack.sample(rows, cols)[NAMES]
    y = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
    with rasterio.open(path) as src:  # every valid cell as the map reads it (float32 on disk)
        cells = src.read(out_dtype=np.float64)[:, valid].T
    return path, valid, table, y, cells


@pytest.fixture(scope="module")
def fitted(crop):
    _, _, table, y, _ = crop
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_model(name, CATEGORICAL, 5, **SMALL.get(name, {})).fit(table, y)
        return cache[name]

    return get


def test_lightgbm_predicts_native_and_equals_the_library(crop, fitted):
    cells = crop[4][::3]  # every third valid cell: more than a map window
    model = fitted("lightgbm")
    assert model.predictor_ == "native"
    assert isinstance(model._fast_trees, NativeTrees) and model._fast_trees.compile_seconds > 0
    frame = pd.DataFrame(cells, columns=NAMES)
    expected = model.predict_proba_library(frame)
    assert cells.shape[0] >= model.COMPILE_MIN_ROWS  # predict_proba takes the compiled path
    np.testing.assert_allclose(model.predict_proba(frame), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.predict_cells(cells, NAMES), expected[:, 1], rtol=0,
                               atol=1e-6)
    # columns given in another order are put back in the model's order
    reordered = NAMES[::-1]
    np.testing.assert_allclose(model.predict_cells(cells[:, ::-1], reordered), expected[:, 1],
                               rtol=0, atol=1e-6)
    assert set(model._fast_trees.objects) == {True}  # raster cells: float32 keys only
    assert 0.05 < expected[:, 1].mean() < 0.95  # a real model, not a constant


@pytest.mark.parametrize("name", ["rf", "fr-rf"])
def test_packed_and_native_forests_equal_sklearn(name, crop, fitted):
    """Forests keep sklearn's walk below FOREST_NATIVE_MIN_CELLS; the packed walk and the
    machine code give the same probabilities (the same sums, bit for bit)."""
    cells = crop[4][::3]
    model = fitted(name)
    assert model.predictor_ == "library"
    forest = model.steps[-1][1]
    encoded = model[:-1].transform(pd.DataFrame(cells, columns=NAMES))
    expected = forest.predict_proba(encoded)[:, 1]
    packed = compile_forest(forest)
    native = compile_native(packed)
    np.testing.assert_allclose(packed.positive_proba(encoded), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(native.positive_proba(encoded), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(native.positive_proba(encoded, n_threads=1),
                                  packed.positive_proba(encoded))
    # sklearn's threads add the trees in no fixed order: equal to the last bits only
    np.testing.assert_allclose(model.predict_cells(cells, NAMES), expected, rtol=0, atol=1e-12)


def test_float32_keys_keep_the_order_of_the_floats():
    """The forests' machine code compares int32 keys: every pair of floats, signed zeros,
    subnormals, extremes and infinities included, must compare as the floats do."""
    rng = np.random.default_rng(1)
    tiny = np.finfo(np.float32).smallest_subnormal
    edges = np.array([-np.inf, -3.4e38, -1.0, -tiny, -0.0, 0.0, tiny, 1e-38, 1.0, 3.4e38,
                      np.inf], dtype=np.float32)
    values = np.concatenate([edges, rng.normal(0, 1e3, 300).astype(np.float32),
                             rng.normal(0, 1e-3, 300).astype(np.float32)])
    keys = _native.float32_keys(values)
    assert keys.dtype == np.int32
    np.testing.assert_array_equal(keys[:, None] <= keys[None, :],
                                  values[:, None] <= values[None, :])


@pytest.mark.parametrize("name", ["rf", "lightgbm"])
def test_ties_at_thresholds_follow_the_library(name, fitted):
    """Cells exactly at split thresholds and one float step either side: sklearn compares
    float32-cast values (``<=`` goes left), LightGBM float64 values."""
    model = fitted(name)
    final = model.named_steps["model"]
    packed = compile_forest(final) if name == "rf" else compile_lightgbm(final)
    split = np.isfinite(packed.threshold)
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(split), 3000, replace=False)
    encoded = model.named_steps["prep"].transform(pd.DataFrame(
        np.tile(np.asarray([[1500.0, 30.0, 0.1, 0.2, 2.0, 6.0]]), (pick.size * 3, 1)),
        columns=NAMES))
    at = packed.threshold[pick]
    for k, value in enumerate((at, np.nextafter(at, -np.inf), np.nextafter(at, np.inf))):
        encoded[k * pick.size + np.arange(pick.size), packed.feature[pick]] = value
    expected = final.predict_proba(encoded)[:, 1]
    np.testing.assert_allclose(packed.positive_proba(encoded), expected, rtol=0, atol=1e-6)
    native = compile_native(packed)
    np.testing.assert_allclose(native.positive_proba(encoded), expected, rtol=0, atol=1e-6)
    # LightGBM's float64 steps are no float32 values: its float64 code was compiled too
    assert set(native.objects) == ({True, False} if name == "lightgbm" else {True})


def test_unsupported_models_fall_back_to_the_library(crop, fitted):
    _, _, table, y, cells = crop
    zero_missing = make_model("lightgbm", CATEGORICAL, 5, n_estimators=40)
    zero_missing.named_steps["model"].set_params(zero_as_missing=True)
    zero_missing.fit(table, y)
    assert zero_missing.predictor_ == "library"  # zero-as-missing: neither packed nor native
    frame = pd.DataFrame(cells[:2000], columns=NAMES)
    np.testing.assert_array_equal(zero_missing.predict_cells(cells[:2000], NAMES),
                                  zero_missing.predict_proba(frame)[:, 1])
    lr = fitted("lr")
    assert lr.predictor_ == "library"
    # NumPy encoding reproduces the pipeline bit for bit, so the map is unchanged
    np.testing.assert_array_equal(lr.predict_cells(cells, NAMES),
                                  lr.predict_proba(pd.DataFrame(cells, columns=NAMES))[:, 1])


def test_native_compilation_falls_back_to_the_packed_walk(crop, monkeypatch, caplog):
    """Switched off, or LLVM failing: LightGBM predicts through the packed walk, same numbers."""
    _, _, table, y, cells = crop
    expected = None
    for switch_off in (True, False):
        with monkeypatch.context() as patch:
            if switch_off:
                patch.setenv(_native.ENV_SWITCH, "0")
            else:
                def broken(*_args):
                    raise RuntimeError("LLVM ERROR: no target")
                patch.setattr(_native, "_emit_objects", broken)
            model = make_model("lightgbm", CATEGORICAL, 5, n_estimators=40).fit(table, y)
            assert model.predictor_ == "packed"
            assert isinstance(model._fast_trees, CompiledTrees)
            got = model.predict_cells(cells, NAMES)
        frame = pd.DataFrame(cells, columns=NAMES)
        expected = model.predict_proba_library(frame)[:, 1] if expected is None else expected
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert "native tree compilation failed (RuntimeError: LLVM ERROR: no target)" in caplog.text
    # a forest whose compilation fails keeps sklearn's walk
    forest = make_model("rf", CATEGORICAL, 5, n_estimators=10).fit(table, y)
    monkeypatch.setattr(_native, "_emit_objects", broken)
    assert forest.prepare_prediction(10**9) == "library"


def test_pickled_models_keep_their_compiled_trees(crop, fitted):
    _, _, _, _, cells = crop
    model = fitted("lightgbm")
    before = model.predict_cells(cells[:5000], NAMES)
    restored = pickle.loads(pickle.dumps(model))
    assert "_fast_encoder" in vars(model) and "_fast_encoder" not in vars(restored)
    assert restored._fast_trees.n_trees == model._fast_trees.n_trees == 120
    # the machine code travels; the new process only loads it
    assert restored._fast_trees.objects == model._fast_trees.objects
    assert restored._fast_trees._entries == {}
    moved = pickle.loads(pickle.dumps(model))
    moved._fast_trees.host = ("another-cpu", "+avx512f")  # unpickled on another machine
    np.testing.assert_array_equal(moved.predict_cells(cells[:5000], NAMES), before)
    assert moved._fast_trees.host == model._fast_trees.host  # compiled again for this one
    np.testing.assert_array_equal(restored.predict_cells(cells[:5000], NAMES), before)
    restored.fit(*crop[2:4])  # a new fit never reuses the old trees
    assert "_fast_trees" not in vars(restored)


@pytest.mark.parametrize("name", ["rf", "lightgbm", "lr", "fr", "fr-rf"])
def test_maps_match_the_library_prediction(name, crop, fitted, tmp_path, monkeypatch):
    path, valid, _, _, cells = crop
    model = pickle.loads(pickle.dumps(fitted(name)))  # a copy: the map may compile it
    if name == "fr-rf":  # a map "large enough" for the forest to compile to machine code
        monkeypatch.setattr(type(model), "FOREST_NATIVE_MIN_CELLS", valid.size)
    out = predict_raster(model, path, tmp_path / "s.tif", feature_names=NAMES, window_size=128,
                         overviews=())
    with rasterio.open(out) as src:
        mapped = src.read(1)
    assert np.array_equal(np.isfinite(mapped), valid)
    frame = pd.DataFrame(cells, columns=NAMES)
    library = getattr(model, "predict_proba_library", model.predict_proba)(frame)[:, 1]
    expected = {"rf": "library", "fr-rf": "native", "lightgbm": "native"}.get(name, "library")
    assert getattr(model, "predictor_", "library") == expected
    if name in ("rf", "lightgbm", "fr-rf"):  # compiled, or sklearn's threads (no fixed order)
        np.testing.assert_allclose(mapped[valid], library, rtol=0, atol=1e-6)
    else:  # the same numbers as the DataFrame path, bit for bit
        np.testing.assert_array_equal(mapped[valid], library.astype(np.float32))


def test_large_maps_get_optimised_or_native_code(crop, fitted):
    """prepare_prediction compiles for the map's size: LightGBM optimised (-O2) from
    OPTIMISE_MIN_CELLS, forests to machine code from FOREST_NATIVE_MIN_CELLS, else unchanged."""
    _, _, table, y, cells = crop
    frame = pd.DataFrame(cells, columns=NAMES)
    booster = make_model("lightgbm", CATEGORICAL, 5, n_estimators=40).fit(table, y)
    assert booster.prepare_prediction(1000) == "native" and booster._fast_trees.opt_level == 0
    small = booster._fast_trees
    assert booster.prepare_prediction(booster.OPTIMISE_MIN_CELLS) == "native"
    assert booster._fast_trees.opt_level == 2 and booster._fast_trees is not small
    np.testing.assert_allclose(booster.predict_cells(cells, NAMES),
                               booster.predict_proba_library(frame)[:, 1], rtol=0, atol=1e-6)
    forest = make_model("rf", CATEGORICAL, 5, n_estimators=10).fit(table, y)
    assert forest.prepare_prediction(forest.FOREST_NATIVE_MIN_CELLS - 1) == "library"
    assert forest.prepare_prediction(forest.FOREST_NATIVE_MIN_CELLS) == "native"
    np.testing.assert_allclose(forest.predict_cells(cells, NAMES),
                               forest.predict_proba_library(frame)[:, 1], rtol=0, atol=1e-6)
    forest.fit(table, y)  # a new fit forgets the compiled trees
    assert forest.predictor_ == "library"
