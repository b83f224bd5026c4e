"""Tasks from blocks: task tables, block splits and support/query sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metalsm.blocks import _tasks as tasks
from metalsm.errors import MetalsmInputError


@pytest.fixture(scope="module")
def hk_tasks():
    """Real Hong Kong samples grouped into point blocks."""
    from metalsm.blocks import segment_points
    from metalsm.datasets import study_area

    table = pd.read_csv(study_area("hongkong") / "samples_HK_noTS.csv", encoding="utf-8-sig")
    table = table.iloc[:3000].reset_index(drop=True)
    factors = [c for c in table.columns if c not in ("X", "Y", "label", "DV")]
    ids = segment_points(table, factors, n_blocks=30, compactness=2.0,
                         categorical=("land use", "lithology"))
    return ids, table["label"].to_numpy()


def test_block_task_table(hk_tasks):
    ids, y = hk_tasks
    table = tasks.block_task_table(ids, y, int(ids.max()) + 2)  # one extra, empty block
    assert list(table.columns) == ["block", "positives", "negatives", "samples",
                                   "single_class", "empty"]
    assert table["samples"].sum() == len(ids)
    assert table["positives"].sum() == (y == 1).sum()
    last = table.iloc[-1]
    assert last["empty"] and not last["single_class"] and last["samples"] == 0
    one = table[table["samples"] > 0]
    assert (one["single_class"] == ((one["positives"] == 0) | (one["negatives"] == 0))).all()


def test_block_task_table_with_raster_blocks():
    from affine import Affine
    from rasterio.crs import CRS

    from metalsm.blocks import Blocks
    from metalsm.raster import Grid

    labels = np.array([[0, 0, 1], [2, 2, 1], [-1, 2, 1]], dtype=np.int32)
    grid = Grid(CRS.from_epsg(32643), Affine(100, 0, 0, 0, -100, 0), 3, 3)
    blocks = Blocks(labels, 3, np.zeros((3, 2)), grid)
    table = tasks.block_task_table(np.array([0, 0, 1]), np.array([1, 0, 1]), blocks)
    assert table["cells"].tolist() == [2, 3, 3]
    np.testing.assert_allclose(table["area_km2"], [0.02, 0.03, 0.03])
    assert table["single_class"].tolist() == [False, True, False]
    assert table["empty"].tolist() == [False, False, True]


def test_split_blocks_fraction_and_seed():
    ids = np.arange(50)
    train, test = tasks.split_blocks(ids, 0.6, seed=4)
    assert train.size == 30 and test.size == 20
    assert np.array_equal(np.sort(np.concatenate([train, test])), ids)
    again = tasks.split_blocks(ids, 0.6, seed=4)
    assert np.array_equal(train, again[0])
    assert not np.array_equal(train, tasks.split_blocks(ids, 0.6, seed=5)[0])
    assert tasks.split_blocks([3, 9], 0.99)[0].size == 1  # never leaves a side empty
    with pytest.raises(MetalsmInputError, match="train_fraction must be between 0 and 1"):
        tasks.split_blocks(ids, 1.0)


def test_split_by_area_schemes():
    area = np.array([1] * 10 + [2] * 5)
    one, two = set(range(10)), set(range(10, 15))
    train, test = tasks.split_by_area(area, "A", 0.6, seed=1)
    assert set(train) | set(test) == one and len(train) == 6 and not set(train) & set(test)
    train, test = tasks.split_by_area(area, "B")
    assert set(train) == one and set(test) == two
    train, test = tasks.split_by_area(area, "C", 0.6, seed=1)
    assert len(set(train) & one) == 6 and len(set(train) & two) == 3
    assert set(test) == one - set(train)
    train, test = tasks.split_by_area(area, "D", 0.6, seed=1)
    assert one <= set(train) and len(set(train) & two) == 3 and set(test) == two - set(train)
    mapped = tasks.split_by_area({7: 1, 3: 2, 5: 1}, "B")
    assert mapped[0].tolist() == [5, 7] and mapped[1].tolist() == [3]
    with pytest.raises(MetalsmInputError, match=r"must be 1 or 2, got \[3\]"):
        tasks.split_by_area([1, 3], "B")
    with pytest.raises(MetalsmInputError, match="unknown split scheme 'E'"):
        tasks.split_by_area(area, "E")
