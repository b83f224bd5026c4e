"""QGIS styles, colour tables and attribute tables beside the class and probability rasters."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from metalsm.mapping import classify_raster
from metalsm.raster import (
    Grid,
    block_colours,
    hex_colour,
    read_class_names,
    write_blocks_style,
    write_credibility_style,
    zone_colours,
)


def _grid(shape):
    return Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 500000, 0, -30, 3800000), *shape)


def _write(path, values, grid, dtype, nodata):
    with rasterio.open(path, "w", **grid.profile(dtype=dtype, nodata=nodata)) as dst:
        dst.write(values.astype(dtype), 1)
    return path


def _qml_entries(path, tag):
    root = ET.parse(path).getroot()
    assert root.tag == "qgis"
    return [e.attrib for e in root.iter(tag)]


def luminance(rgb):
    r, g, b = (c / 255 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_zone_ramp_is_ordered_by_lightness():
    """Readable in grey and with red-green colour blindness: darker means more susceptible."""
    for levels in (2, 3, 4, 5, 7):
        light = [luminance(c) for c in zone_colours(levels)]
        assert all(a > b + 0.03 for a, b in zip(light, light[1:], strict=False)), levels


def test_zone_raster_carries_its_colour_table_labels_and_breaks(tmp_path):
    grid = _grid((40, 50))
    values = np.linspace(0, 1, grid.height * grid.width).reshape(grid.shape)
    values[0, :3] = np.nan
    sus = _write(tmp_path / "susceptibility.tif", values, grid, "float32", np.nan)
    edges = [0.0, 0.1, 0.45, 0.8, 1.0]
    labels = ["Low", "Moderate", "High", "Very high"]
    zones = classify_raster(sus, tmp_path / "zones.tif", edges, labels=labels)
    colours = zone_colours(4)
    with rasterio.open(zones) as src:
        table = src.colormap(1)
    assert [table[level][:3] for level in (1, 2, 3, 4)] == colours
    assert table[0][3] == 0  # no data: transparent
    assert read_class_names(zones) == dict(enumerate(labels, start=1))

    palette = _qml_entries(tmp_path / "zones.qml", "paletteEntry")
    assert [int(e["value"]) for e in palette] == [1, 2, 3, 4]
    assert [e["color"] for e in palette] == [hex_colour(c) for c in colours]
    assert palette[2]["label"] == "High (0.450 – 0.800)"

    items = _qml_entries(tmp_path / "susceptibility.qml", "item")
    assert [float(e["value"]) for e in items] == edges[1:]  # each class up to its break
    assert [e["color"] for e in items] == [e["color"] for e in palette]
    shader = _qml_entries(tmp_path / "susceptibility.qml", "colorrampshader")[0]
    assert shader["colorRampType"] == "DISCRETE"

    rat = ET.parse(f"{zones}.aux.xml").getroot().find(".//GDALRasterAttributeTable")
    names = [f.findtext("Name") for f in rat.findall("FieldDefn")]
    rows = [[c.text for c in r.findall("F")] for r in rat.findall("Row")]
    assert names[:4] == ["Value", "label", "susceptibility_min", "susceptibility_max"]
    assert [float(r[3]) for r in rows] == edges[1:]


def test_zone_labels_must_match_the_levels(tmp_path):
    grid = _grid((10, 10))
    sus = _write(tmp_path / "s.tif", np.linspace(0, 1, 100).reshape(10, 10), grid,
                 "float32", np.nan)
    with pytest.raises(Exception, match="2 zone labels given for 4 zones"):
        classify_raster(sus, tmp_path / "zones.tif", [0, 0.2, 0.5, 0.7, 1], labels=["a", "b"])
    assert not (tmp_path / "zones.tif").exists()


def test_block_ids_get_a_palette_in_the_attribute_table_and_style(tmp_path):
    grid = _grid((30, 30))
    ids = np.arange(900).reshape(30, 30) // 100  # blocks 0..8
    ids[0, 0] = -1
    path = _write(tmp_path / "blocks.tif", ids, grid, "int32", -1)
    write_blocks_style(path, range(9))
    with rasterio.open(path) as src:  # int32: the colour table lives in blocks.tif.aux.xml
        table = src.colormap(1)
    assert [table[i][:3] for i in range(9)] == block_colours(9)
    assert len(set(block_colours(9))) == 9
    palette = _qml_entries(tmp_path / "blocks.qml", "paletteEntry")
    assert [e["label"] for e in palette] == [f"block {i}" for i in range(9)]


def test_credibility_style_spans_zero_to_one(tmp_path):
    path = write_credibility_style(tmp_path / "credibility.tif")
    assert path.name == "credibility.qml"
    items = _qml_entries(path, "item")
    assert [float(e["value"]) for e in items] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len({e["color"] for e in items}) == 5
