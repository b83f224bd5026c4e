"""``project.qgs``: one QGIS project that opens a run's layers, each in its style.

The raster layers carry the renderers of their ``.qml`` files (:mod:`metalsm.raster._styles`);
the vector layers get a renderer here: samples by label (landslides as triangles),
block outlines. Paths are relative to the project, so the run folder can be moved or
shared as a whole. Written with the standard library's XML tools in the layout of
QGIS 3 project files (``<qgis>``: layer tree, ``<projectlayers>``, map canvas extent).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metalsm.atomic import write_text
from metalsm.raster._styles import _QGIS_VERSION, style_path

__all__ = ["ProjectLayer", "write_qgis_project"]


@dataclass(frozen=True)
class ProjectLayer:
    """One layer of the project: a file of the run folder (``layer``: the GeoPackage
    layer name of a vector), shown (``visible``) or only listed."""

    file: str
    name: str
    visible: bool = True
    layer: str | None = None

    @property
    def is_vector(self) -> bool:
        return self.layer is not None


#: Marker colours of samples.gpkg (landslides blue triangles, which stand out on the
#: yellow-to-red zones; others grey circles).
_SAMPLE_STYLE = {1: ("landslide sample", "triangle", (0, 114, 178)),
                 0: ("non-landslide sample", "circle", (110, 110, 110))}


def write_qgis_project(out_dir: str | Path, layers: Sequence[ProjectLayer], crs, bounds,
                       title: str) -> Path:
    """``out_dir/project.qgs`` listing ``layers`` (first = top of the layer panel) in
    ``crs`` (a rasterio CRS), zoomed to ``bounds`` (left, bottom, right, top)."""
    out_dir = Path(out_dir)
    root = ET.Element("qgis", projectname=title, version=_QGIS_VERSION)
    ET.SubElement(root, "title").text = title
    ET.SubElement(ET.SubElement(root, "projectCrs"), "spatialrefsys").extend(_srs(crs))
    tree = ET.SubElement(root, "layer-tree-group")
    ET.SubElement(tree, "customproperties")
    canvas = ET.SubElement(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    ET.SubElement(canvas, "units").text = "meters" if crs.is_projected else "degrees"
    canvas.append(_extent(bounds))
    ET.SubElement(ET.SubElement(canvas, "destinationsrs"), "spatialrefsys").extend(_srs(crs))
    project_layers = ET.SubElement(root, "projectlayers")
    for index, layer in enumerate(layers):
        layer_id = f"{Path(layer.file).stem}_{layer.layer or 'raster'}_{index}"
        source = f"./{layer.file}" + (f"|layername={layer.layer}" if layer.is_vector else "")
        provider = "ogr" if layer.is_vector else "gdal"
        ET.SubElement(tree, "layer-tree-layer", id=layer_id, name=layer.name, source=source,
                      providerKey=provider, expanded="0",
                      checked="Qt::Checked" if layer.visible else "Qt::Unchecked")
        project_layers.append(_map_layer(out_dir, layer, layer_id, source, provider, crs,
                                         bounds))
    properties = ET.SubElement(root, "properties")
    ET.SubElement(ET.SubElement(properties, "Paths"), "Absolute", type="bool").text = "false"
    # without it QGIS reads the project as one of "no projection" and drops its CRS
    ET.SubElement(ET.SubElement(properties, "SpatialRefSys"), "ProjectionsEnabled",
                  type="int").text = "1"
    ET.indent(root)
    return write_text(out_dir / "project.qgs",
                      "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
                      + ET.tostring(root, encoding="unicode") + "\n")


def _map_layer(out_dir: Path, layer: ProjectLayer, layer_id: str, source: str, provider: str,
               crs, bounds) -> ET.Element:
    kind = "vector" if layer.is_vector else "raster"
    attrs = {"type": kind, "hasScaleBasedVisibilityFlag": "0",
             "styleCategories": "AllStyleCategories"}
    if layer.is_vector:
        attrs["geometry"] = "Point" if layer.layer == "samples" else "Polygon"
    element = ET.Element("maplayer", **attrs)
    element.append(_extent(bounds))
    ET.SubElement(element, "id").text = layer_id
    ET.SubElement(element, "datasource").text = source
    ET.SubElement(element, "layername").text = layer.name
    ET.SubElement(ET.SubElement(element, "srs"), "spatialrefsys").extend(_srs(crs))
    ET.SubElement(element, "provider", encoding="UTF-8").text = provider
    if layer.is_vector:
        element.append(_samples_renderer() if layer.layer == "samples"
                       else _outline_renderer())
    else:
        qml = style_path(out_dir / layer.file)
        if qml.exists():  # the raster's own style: its <pipe> holds the renderer
            element.append(ET.parse(qml).getroot().find("pipe"))
        else:  # a stack of factors: its first band in grey, not three bands as RGB
            element.append(_grey_first_band(out_dir / layer.file))
    ET.SubElement(element, "blendMode").text = "0"
    return element


def _grey_first_band(path: Path) -> ET.Element:
    """A ``<pipe>`` drawing band 1 in grey, stretched over its range (read from the
    smallest overview, so a province-scale raster is not read whole)."""
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        factors = src.overviews(1)
        scale = factors[-1] if factors else 1
        values = src.read(1, out_shape=(max(1, src.height // scale), max(1, src.width // scale)),
                          masked=True).astype(np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.count() else (0.0, 1.0)
    pipe = ET.Element("pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandgray", grayBand="1",
                             gradient="BlackToWhite", opacity="1", alphaBand="-1")
    ET.SubElement(renderer, "rasterTransparency")
    enhancement = ET.SubElement(renderer, "contrastEnhancement")
    ET.SubElement(enhancement, "minValue").text = repr(lo)
    ET.SubElement(enhancement, "maxValue").text = repr(hi)
    ET.SubElement(enhancement, "algorithm").text = "StretchToMinimumMaximum"
    return pipe


def _srs(crs) -> list[ET.Element]:
    """The children of a ``<spatialrefsys>``: WKT2 (what QGIS 3 reads first), PROJ
    string and authority id."""
    epsg = crs.to_epsg()
    values = {"wkt": crs.to_wkt(version="WKT2_2019"), "proj4": crs.to_proj4(),
              "srid": str(epsg or ""), "authid": f"EPSG:{epsg}" if epsg else "",
              "geographicflag": "false" if crs.is_projected else "true"}
    elements = []
    for key, value in values.items():
        element = ET.Element(key)
        element.text = value
        elements.append(element)
    return elements


def _extent(bounds) -> ET.Element:
    extent = ET.Element("extent")
    for key, value in zip(("xmin", "ymin", "xmax", "ymax"), bounds, strict=True):
        ET.SubElement(extent, key).text = repr(float(value))
    return extent


def _rgba(rgb) -> str:
    return ",".join(str(int(c)) for c in (*rgb, 255))


def _symbol(name: str, kind: str, layer_class: str, props: dict[str, str]) -> ET.Element:
    symbol = ET.Element("symbol", type=kind, name=name, alpha="1", clip_to_extent="1",
                        force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": layer_class, "enabled": "1",
                                            "locked": "0", "pass": "0"})
    options = ET.SubElement(layer, "Option", type="Map")
    for key, value in props.items():
        ET.SubElement(options, "Option", name=key, value=value, type="QString")
        ET.SubElement(layer, "prop", k=key, v=value)  # the older spelling QGIS also reads
    return symbol


def _samples_renderer() -> ET.Element:
    renderer = ET.Element("renderer-v2", type="categorizedSymbol", attr="label",
                          symbollevels="0", enableorderby="0", forceraster="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, (value, (label, shape, colour)) in enumerate(_SAMPLE_STYLE.items()):
        ET.SubElement(categories, "category", value=str(value), symbol=str(index),
                      label=label, render="true")
        symbols.append(_symbol(str(index), "marker", "SimpleMarker", {
            "name": shape, "color": _rgba(colour), "size": "2.0", "size_unit": "MM",
            "outline_color": "255,255,255,255", "outline_width": "0.2",
            "outline_width_unit": "MM", "outline_style": "solid"}))
    return renderer


def _outline_renderer() -> ET.Element:
    renderer = ET.Element("renderer-v2", type="singleSymbol", symbollevels="0",
                          enableorderby="0", forceraster="0")
    symbols = ET.SubElement(renderer, "symbols")
    symbols.append(_symbol("0", "fill", "SimpleFill", {
        "style": "no", "color": "0,0,0,0", "outline_color": "35,35,35,255",
        "outline_width": "0.4", "outline_width_unit": "MM", "outline_style": "solid"}))
    return renderer
