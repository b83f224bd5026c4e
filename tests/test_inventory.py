import geopandas as gpd
import numpy as np
import pytest
import shapely

from metalsm.errors import MetalsmInputError
from metalsm.inputs import landslide_mask, positive_cells, read_inventory
from metalsm.raster import Grid


@pytest.fixture(scope="module")
def grid(kaghan):
    return Grid.from_raster(kaghan / "AW3D30.tif")


@pytest.fixture(scope="module")
def inventory(kaghan, grid):
    return read_inventory(kaghan / "landslides.shp", grid)


@pytest.fixture(scope="module")
def dem(kaghan):
    import rasterio

    with rasterio.open(kaghan / "AW3D30.tif") as src:
        return src.read(1)


def test_real_inventory_reads_in_grid_crs(inventory, grid):
    assert len(inventory) == 3820
    assert inventory.crs == grid.crs
    assert not shapely.has_z(inventory.geometry.values).any()


def test_centroid_rule_gives_one_cell_per_polygon_at_most(inventory, grid):
    valid = np.ones(grid.shape, bool)
    rows, cols = positive_cells(inventory, grid, valid, rule="centroid")
    assert 3700 < rows.size <= 3820  # a few polygons share a cell
    flat = rows * grid.width + cols
    assert np.unique(flat).size == flat.size
    # every positive centre lies in (or within one cell of) a landslide polygon
    x, y = grid.xy(rows, cols)
    points = gpd.GeoSeries(gpd.points_from_xy(x, y), crs=grid.crs)
    distance = points.distance(inventory.geometry.union_all())
    assert (distance <= grid.cell_size * 0.75).mean() > 0.99


def test_rules_differ_as_defined(inventory, grid, dem):
    valid = np.ones(grid.shape, bool)
    mask = landslide_mask(inventory, grid)
    counts = {}
    for rule in ("centroid", "scarp", "all", "random"):
        rows, cols = positive_cells(
            inventory, grid, valid, rule=rule, dem=dem, cells_per_polygon=2, seed=3
        )
        counts[rule] = rows.size
        assert mask[rows, cols].mean() > 0.99
    assert counts["all"] > counts["random"] > counts["centroid"]
    assert counts["random"] <= 2 * len(inventory)


def test_scarp_is_the_highest_cell_of_its_polygon(inventory, grid, dem):
    valid = np.ones(grid.shape, bool)
    rows, cols = positive_cells(inventory, grid, valid, rule="scarp", dem=dem)
    largest = inventory.geometry.iloc[int(inventory.area.argmax())]
    from rasterio.features import geometry_mask

    inside = geometry_mask([largest], grid.shape, grid.transform, invert=True)
    top = np.unravel_index(np.argmax(np.where(inside, dem, -np.inf)), grid.shape)
    assert np.any((rows == top[0]) & (cols == top[1]))


def test_random_rule_is_seeded(inventory, grid):
    valid = np.ones(grid.shape, bool)
    a = positive_cells(inventory, grid, valid, rule="random", seed=1)
    b = positive_cells(inventory, grid, valid, rule="random", seed=1)
    c = positive_cells(inventory, grid, valid, rule="random", seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_positives_only_on_valid_cells(inventory, grid):
    valid = np.ones(grid.shape, bool)
    valid[:, : grid.width // 2] = False
    rows, cols = positive_cells(inventory, grid, valid, rule="centroid")
    assert (cols >= grid.width // 2).all()


def test_reprojected_inventory_matches(kaghan, grid, inventory, tmp_path):
    path = tmp_path / "slides_wgs84.gpkg"
    inventory.to_crs(4326).to_file(path)
    again = read_inventory(path, grid)
    valid = np.ones(grid.shape, bool)
    a = positive_cells(inventory, grid, valid)
    b = positive_cells(again, grid, valid)
    same = np.intersect1d(a[0] * grid.width + a[1], b[0] * grid.width + b[1]).size
    assert same / a[0].size > 0.98


def test_csv_points_with_crs(grid, inventory, tmp_path):
    centroids = inventory.geometry.centroid.iloc[:50]
    path = tmp_path / "points.csv"
    path.write_text(
        "X,Y\n" + "\n".join(f"{p.x},{p.y}" for p in centroids) + "\n1000,1000\n"
    )
    with pytest.raises(MetalsmInputError, match="points.csv is a table: set inventory.crs"):
        read_inventory(path, grid)
    with pytest.raises(MetalsmInputError, match=r"missing coordinate column\(s\) \['x', 'y'\]"):
        read_inventory(path, grid, crs="EPSG:32643")
    points = read_inventory(path, grid, crs="EPSG:32643", x_column="X", y_column="Y")
    assert len(points) == 50 and points.attrs["n_outside"] == 1
    rows, cols = positive_cells(points, grid, np.ones(grid.shape, bool))
    assert rows.size <= 50 and rows.size > 40


def test_bad_inventories_are_named(grid, inventory, tmp_path):
    with pytest.raises(MetalsmInputError, match="not found: .*absent.shp"):
        read_inventory(tmp_path / "absent.shp", grid)
    far = inventory.iloc[:20].copy()
    far.geometry = far.geometry.translate(1e6, 0)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(MetalsmInputError, match="far.gpkg: none of its features lies inside"):
        read_inventory(tmp_path / "far.gpkg", grid)
    few = inventory.iloc[:5]
    with pytest.raises(MetalsmInputError, match="only 5 usable landslide cell"):
        positive_cells(few, grid, np.ones(grid.shape, bool))
    empty = tmp_path / "empty.csv"
    empty.write_text("x,y\n")
    with pytest.raises(MetalsmInputError, match="empty.csv holds no features"):
        read_inventory(empty, grid, crs="EPSG:32643")


def _burn(inventory, grid, path, values):
    """The inventory polygons rasterized onto ``grid`` (cell centres, last drawn wins, as
    the polygon rules do) with ``values`` per polygon, written as a GeoTIFF."""
    import rasterio
    from rasterio.features import rasterize

    burned = rasterize(((g, int(v)) for g, v in zip(inventory.geometry, values, strict=True)),
                       out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32")
    with rasterio.open(path, "w", **grid.profile(dtype="int32", nodata=-1)) as dst:
        dst.write(burned, 1)
    return burned


def _cells(rows, cols, grid):
    return set((rows * grid.width + cols).tolist())


def test_raster_inventory_gives_the_polygons_positives(inventory, grid, dem, tmp_path):
    """The Kaghan polygons burned as landslide ids: the same landslide cells and the same
    cells under 'all'; a scarp for every polygon's patch; centroids within a cell."""
    polygons = inventory[shapely.get_type_id(inventory.geometry.values) == 3]
    burned = _burn(polygons, grid, tmp_path / "ids.tif", np.arange(1, len(polygons) + 1))
    patches = read_inventory(tmp_path / "ids.tif", grid)
    assert patches.crs == grid.crs and patches["cells"].sum() == (burned > 0).sum()
    assert np.array_equal(landslide_mask(patches, grid), burned > 0)
    covered = polygons.iloc[np.unique(burned[burned > 0]) - 1]  # polygons holding a centre
    valid = np.ones(grid.shape, bool)
    assert _cells(*positive_cells(patches, grid, valid, rule="all"), grid) == _cells(
        *positive_cells(covered, grid, valid, rule="all"), grid)
    raster_scarps = _cells(*positive_cells(patches, grid, valid, rule="scarp", dem=dem), grid)
    polygon_scarps = _cells(*positive_cells(covered, grid, valid, rule="scarp", dem=dem), grid)
    # a polygon burned into pieces gives one patch (and one scarp) per piece
    assert polygon_scarps <= raster_scarps
    assert len(raster_scarps) - len(polygon_scarps) <= len(patches) - len(covered)
    assert len(patches) - len(covered) < 0.05 * len(covered)
    near = np.zeros(grid.shape, bool)
    rows, cols = positive_cells(covered, grid, valid, rule="centroid")
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            near[np.clip(rows + dr, 0, grid.height - 1), np.clip(cols + dc, 0, grid.width - 1)] = 1
    rows, cols = positive_cells(patches, grid, valid, rule="centroid")
    assert near[rows, cols].mean() > 0.95


def test_raster_mask_patches_and_errors(inventory, grid, tmp_path):
    import rasterio

    burned = _burn(inventory, grid, tmp_path / "mask.tif", np.ones(len(inventory)))
    patches = read_inventory(tmp_path / "mask.tif", grid)
    assert set(patches["value"]) == {1}
    assert np.array_equal(landslide_mask(patches, grid), burned > 0)
    assert len(patches) < len(inventory)  # touching landslides merge into one patch
    with rasterio.open(tmp_path / "empty.tif", "w", **grid.profile(dtype="uint8")) as dst:
        dst.write(np.zeros((1, *grid.shape), np.uint8))
    with pytest.raises(MetalsmInputError, match=r"empty\.tif has no landslide cells"):
        read_inventory(tmp_path / "empty.tif", grid)
    profile = grid.profile(dtype="uint8")
    profile.pop("crs")
    with rasterio.open(tmp_path / "nocrs.tif", "w", **profile) as dst:
        dst.write(np.ones((1, *grid.shape), np.uint8))
    with pytest.raises(MetalsmInputError, match=r"nocrs\.tif has no CRS"):
        read_inventory(tmp_path / "nocrs.tif", grid)


def test_preflight_accepts_a_raster_inventory_and_names_a_bad_one(
        kaghan, kaghan_crop, grid, inventory, tmp_path):
    import rasterio
    from conftest import write_config

    from metalsm.config import load_config
    from metalsm.pipeline._preflight import check_run

    _burn(inventory, grid, tmp_path / "mask.tif", np.ones(len(inventory)))
    config = write_config(tmp_path / "ok.toml", kaghan_crop, kaghan,
                          inventory=f'path = "{tmp_path / "mask.tif"}"\nrule = "scarp"')
    check_run(load_config(config), None)  # no problem raised
    profile = grid.profile(dtype="uint8")
    profile.pop("crs")
    with rasterio.open(tmp_path / "nocrs.tif", "w", **profile) as dst:
        dst.write(np.ones((1, *grid.shape), np.uint8))
    config = write_config(tmp_path / "bad.toml", kaghan_crop, kaghan,
                          inventory=f'path = "{tmp_path / "nocrs.tif"}"')
    with pytest.raises(MetalsmInputError, match=r"inventory: raster .*nocrs\.tif has no CRS"):
        check_run(load_config(config), None)
