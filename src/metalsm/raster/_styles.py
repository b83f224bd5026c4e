"""Colours and QGIS styles for the raster outputs, so they open styled, not as grey values.

One source of colours for the files, the figures and the report: zones use a
ColorBrewer-like yellow-orange-red sequential ramp (``YlOrRd``; ordered by
lightness, so it reads in grey and with red-green colour blindness), credibility
the ``cividis`` ramp (designed for colour-vision deficiency), blocks a qualitative
palette. Beside each raster goes a QGIS style (``<name>.qml``, which QGIS loads
when the layer is added) and, for the class rasters, a GDAL raster attribute table
in ``<name>.tif.aux.xml`` (value, label, colour; for zones also the break values).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metalsm.atomic import write_text

__all__ = [
    "RGB",
    "block_colours",
    "hex_colour",
    "paletted_qml",
    "pseudocolor_qml",
    "UNCERTAINTY_CMAP",
    "style_path",
    "uncertainty_colormap",
    "write_attribute_table",
    "write_blocks_style",
    "write_credibility_style",
    "write_uncertainty_style",
    "write_zone_styles",
    "zone_colours",
    "zone_legend_labels",
]

RGB = tuple[int, int, int]

#: Share of the colour maps used: the palest yellow of YlOrRd vanishes on white paper.
_ZONE_RAMP_RANGE = (0.15, 0.95)
_QGIS_VERSION = "3.28.0-Firenze"
#: GDAL raster attribute table codes (gdal.h: GDALRATFieldType / GDALRATFieldUsage).
_INTEGER, _REAL, _STRING = 0, 1, 2
_USAGE = {"generic": 0, "name": 2, "min": 3, "max": 4, "minmax": 5, "red": 6, "green": 7,
          "blue": 8}


def _ramp(name: str, n: int, lo: float = 0.0, hi: float = 1.0) -> list[RGB]:
    from matplotlib import colormaps

    cmap = colormaps[name]
    positions = np.linspace(lo, hi, n) if n > 1 else np.array([hi])
    return [tuple(int(round(255 * c)) for c in cmap(p)[:3]) for p in positions]


def zone_colours(levels: int) -> list[RGB]:
    """One colour per zone, low to high susceptibility (pale yellow to dark red)."""
    return _ramp("YlOrRd", levels, *_ZONE_RAMP_RANGE)


def block_colours(n_blocks: int) -> list[RGB]:
    """A qualitative colour per block id, neighbouring ids in different hues."""
    base = _ramp("tab20", 20)
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the ten strong hues, then their tints
    return [base[order[i % 20]] for i in range(n_blocks)]


def hex_colour(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def zone_legend_labels(edges: Sequence[float], labels: Sequence[str]) -> list[str]:
    """``"High (0.412 – 0.730)"``: the zone name and its susceptibility range."""
    return [f"{label} ({lo:.3f} – {hi:.3f})"
            for label, lo, hi in zip(labels, edges[:-1], edges[1:], strict=True)]


# ------------------------------------------------------------------------------ QGIS styles


def _qml(renderer: ET.Element) -> str:
    root = ET.Element("qgis", version=_QGIS_VERSION, styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    pipe.append(renderer)
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            + ET.tostring(root, encoding="unicode") + "\n")


def _renderer(kind: str, **attrs: str) -> ET.Element:
    renderer = ET.Element("rasterrenderer", type=kind, band="1", opacity="1",
                          alphaBand="-1", nodataColor="", **attrs)
    ET.SubElement(renderer, "rasterTransparency")
    return renderer


def paletted_qml(values: Sequence[int], colours: Sequence[RGB], labels: Sequence[str]) -> str:
    """A QGIS ``paletted`` (unique values) style: one colour and label per class value."""
    renderer = _renderer("paletted")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, colour, label in zip(values, colours, labels, strict=True):
        ET.SubElement(palette, "paletteEntry", value=str(int(value)), color=hex_colour(colour),
                      alpha="255", label=label)
    return _qml(renderer)


def pseudocolor_qml(values: Sequence[float], colours: Sequence[RGB], labels: Sequence[str],
                    *, lo: float, hi: float, discrete: bool) -> str:
    """A QGIS ``singlebandpseudocolor`` style over ``[lo, hi]``.

    ``discrete``: every cell up to ``values[i]`` (and above ``values[i-1]``) gets
    ``colours[i]`` -- classes with break values; otherwise colours are interpolated
    between the stops ``values``.
    """
    renderer = _renderer("singlebandpseudocolor", classificationMin=repr(float(lo)),
                         classificationMax=repr(float(hi)))
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                           colorRampType="DISCRETE" if discrete else "INTERPOLATED",
                           classificationMode="1", clip="0",
                           minimumValue=repr(float(lo)), maximumValue=repr(float(hi)))
    for value, colour, label in zip(values, colours, labels, strict=True):
        ET.SubElement(shader, "item", value=repr(float(value)), color=hex_colour(colour),
                      alpha="255", label=label)
    return _qml(renderer)


# ------------------------------------------------------------------ GDAL attribute tables


def write_attribute_table(
    raster: str | os.PathLike, columns: dict[str, tuple[str, Sequence]],
    colours: Sequence[RGB] | None = None, colour_table_size: int = 0,
) -> Path:
    """``<raster>.aux.xml``: a thematic raster attribute table (``columns``: name ->
    (usage, values); the first is the class value) plus Red/Green/Blue columns and,
    when ``colour_table_size``, a colour table (for rasters whose type the GeoTIFF
    colour table does not allow, such as int32 block ids)."""
    band = ET.Element("PAMRasterBand", band="1")
    if colours is not None and colour_table_size:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        by_value = dict(zip(columns[next(iter(columns))][1], colours, strict=True))
        for value in range(colour_table_size):
            r, g, b = by_value.get(value, (0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b),
                          c4="255" if value in by_value else "0")
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = dict(columns)
    if colours is not None:
        for i, name in enumerate(("Red", "Green", "Blue")):
            fields[name] = (name.lower(), [c[i] for c in colours])
    rows = len(next(iter(fields.values()))[1])
    for index, (name, (usage, values)) in enumerate(fields.items()):
        kind = (_STRING if isinstance(values[0], str)
                else _REAL if isinstance(values[0], float | np.floating) else _INTEGER)
        defn = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(defn, "Name").text = name
        ET.SubElement(defn, "Type").text = str(kind)
        ET.SubElement(defn, "Usage").text = str(_USAGE[usage])
    for r in range(rows):
        row = ET.SubElement(rat, "Row", index=str(r))
        for _, values in fields.values():
            value = values[r]
            ET.SubElement(row, "F").text = repr(float(value)) if isinstance(
                value, float | np.floating) else str(value)
    root = ET.Element("PAMDataset")
    root.append(band)
    ET.indent(root)
    return write_text(f"{raster}.aux.xml", ET.tostring(root, encoding="unicode") + "\n")


# ------------------------------------------------------------------------- per output


def style_path(raster: str | os.PathLike) -> Path:
    """Where QGIS looks for a raster's default style: same name, ``.qml``."""
    return Path(raster).with_suffix(".qml")


def write_zone_styles(zones_path: str | os.PathLike, susceptibility_path: str | os.PathLike,
                      edges: Sequence[float], labels: Sequence[str]) -> list[Path]:
    """zones.qml + the zones attribute table, and susceptibility.qml classed by the same
    breaks: both maps open in QGIS with the report's colours and legend."""
    edges = [float(e) for e in edges]
    levels = len(edges) - 1
    colours = zone_colours(levels)
    legend = zone_legend_labels(edges, labels)
    values = list(range(1, levels + 1))
    paths = [write_text(style_path(zones_path), paletted_qml(values, colours, legend))]
    paths.append(write_attribute_table(zones_path, {
        "Value": ("minmax", values), "label": ("name", list(labels)),
        "susceptibility_min": ("min", edges[:-1]), "susceptibility_max": ("max", edges[1:]),
    }, colours))
    paths.append(write_text(style_path(susceptibility_path), pseudocolor_qml(
        edges[1:], colours, legend, lo=edges[0], hi=edges[-1], discrete=True)))
    return paths


def write_blocks_style(blocks_path: str | os.PathLike, block_ids: Sequence[int]) -> list[Path]:
    """blocks.qml and an attribute table with a colour table (int32 ids: in ``.aux.xml``)."""
    ids = [int(i) for i in block_ids]
    colours = block_colours(len(ids))
    labels = [f"block {i}" for i in ids]
    return [
        write_text(style_path(blocks_path), paletted_qml(ids, colours, labels)),
        write_attribute_table(blocks_path, {"Value": ("minmax", ids), "label": ("name", labels)},
                              colours, colour_table_size=max(ids, default=-1) + 1),
    ]


def write_credibility_style(credibility_path: str | os.PathLike) -> Path:
    """credibility.qml: the 0-1 credibility on the cividis ramp."""
    stops = np.linspace(0.0, 1.0, 5)
    labels = [f"{s:.2f}" for s in stops]
    return write_text(style_path(credibility_path), pseudocolor_qml(
        stops, _ramp("cividis", stops.size), labels, lo=0.0, hi=1.0, discrete=False))


#: Ramp of uncertainty.tif (light = stable, dark blue = changes most across refits),
#: its lightest tenth left out so that low values stay visible over white.
UNCERTAINTY_CMAP = "PuBu"
_UNCERTAINTY_RANGE = (0.15, 1.0)


def uncertainty_colormap():
    """The matplotlib colormap of uncertainty.png: the .qml's ramp."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps[UNCERTAINTY_CMAP](np.linspace(*_UNCERTAINTY_RANGE, 256)),
                          name="uncertainty")


def write_uncertainty_style(uncertainty_path: str | os.PathLike, hi: float) -> Path:
    """uncertainty.qml: the standard deviation from 0 to ``hi`` (e.g. its 99th
    percentile over the map) on a light-to-dark blue ramp; higher values get the
    darkest colour."""
    hi = float(hi) if hi > 0 else 1.0
    stops = np.linspace(0.0, hi, 5)
    labels = [f"{s:.3f}" for s in stops]
    return write_text(style_path(uncertainty_path), pseudocolor_qml(
        stops, _ramp(UNCERTAINTY_CMAP, stops.size, *_UNCERTAINTY_RANGE), labels, lo=0.0, hi=hi,
        discrete=False))
