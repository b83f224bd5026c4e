"""Shared fixtures: the real Kaghan data and small crops of it written as real GeoTIFFs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window

from metalsm.datasets import study_area

# A 260 x 300 window in the south-west, where the inventory is dense.
CROP = Window(col_off=150, row_off=550, width=300, height=260)


@pytest.fixture(scope="session")
def kaghan() -> Path:
    """The real Kaghan data directory (fails loudly with the path when absent)."""
    return study_area("kaghan")


@pytest.fixture(scope="session")
def kaghan_crop(kaghan: Path, tmp_path_factory) -> Path:
    """DEM, geology and land cover cropped to :data:`CROP`, with attribute tables copied."""
    out = tmp_path_factory.mktemp("kaghan_crop")
    for name in ("AW3D30", "Geology", "Landcover"):
        with rasterio.open(kaghan / f"{name}.tif") as src:
            profile = src.profile.copy()
            profile.update(
                width=CROP.width,
                height=CROP.height,
                transform=rasterio.windows.transform(CROP, src.transform),
                tiled=False,
            )
            profile.pop("blockxsize", None)
            profile.pop("blockysize", None)
            with rasterio.open(out / f"{name}.tif", "w", **profile) as dst:
                dst.write(src.read(window=CROP))
        aux = kaghan / f"{name}.tif.aux.xml"
        if aux.exists():
            (out / f"{name}.tif.aux.xml").write_text(aux.read_text())
    return out


def write_config(path: Path, crop: Path, kaghan: Path, **sections: str) -> Path:
    """A study-area TOML for the crop; ``sections`` replace whole tables by name."""
    tables = {
        "terrain": 'factors = ["elevation", "slope", "aspect_sin", "aspect_cos", '
        '"plan_curvature", "profile_curvature", "twi", "spi", "distance_to_drainage"]\n'
        "drainage_threshold_km2 = 0.5",
        "inventory": f'path = "{kaghan / "landslides.shp"}"\nrule = "centroid"',
        "sampling": 'method = "random"\nratio = 1.0\nbuffer_m = 60.0\nseed = 7',
        "model": 'names = ["lr", "rf", "fr"]\nmap_model = "rf"\nseed = 7',
        "validation": 'n_folds = 3\nspatial_method = "kmeans"\nseed = 7',
        "zones": 'method = "quantile"\nlevels = 4',
        "output": "window_size = 128",
    }
    tables.update(sections)
    text = f'name = "kaghan-crop"\ndem = "{crop / "AW3D30.tif"}"\n\n'
    text += (
        f'[[rasters]]\nname = "geology"\npath = "{crop / "Geology.tif"}"\n'
        'kind = "categorical"\n\n'
    )
    text += (
        f'[[rasters]]\nname = "landcover"\npath = "{crop / "Landcover.tif"}"\n'
        'kind = "categorical"\n\n'
    )
    text += (
        f'[[vectors]]\nname = "distance_to_faults"\n'
        f'path = "{kaghan / "Confirmed_faults.shp"}"\n\n'
    )
    text += "\n\n".join(f"[{k}]\n{v}" for k, v in tables.items() if v is not None) + "\n"
    path.write_text(text)
    return path


HK_FACTORS = ["land use", "lithology", "DEM", "slope", "curvature", "aspect", "NDVI", "SPI",
              "TWI", "dis2road", "dis2drainage", "dis2catchment", "dis2faults", "DV"]


@cache
def hongkong_table() -> pd.DataFrame:
    """The real Hong Kong sample table (read once per test session; do not modify it)."""
    return pd.read_csv(study_area("hongkong") / "samples_HK_noTS.csv", encoding="utf-8-sig")


def hk_slice(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A seeded random slice of the Hong Kong table, all columns as float."""
    return hongkong_table().astype(float).sample(n, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="session")
def landcover_geographic(kaghan_crop: Path, tmp_path_factory) -> Path:
    """The cropped land cover reprojected (nearest) to EPSG:4326 at about its own resolution:
    a categorical raster in degrees whose cells are no finer than the UTM grid's."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    out = tmp_path_factory.mktemp("geographic") / "Landcover_4326.tif"
    with rasterio.open(kaghan_crop / "Landcover.tif") as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        values = np.full((height, width), src.nodata, dtype=src.dtypes[0])
        reproject(rasterio.band(src, 1), values, dst_transform=transform, dst_crs="EPSG:4326",
                  dst_nodata=src.nodata, resampling=Resampling.nearest)
        profile = src.profile | {"crs": "EPSG:4326", "transform": transform,
                                 "width": width, "height": height}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(values, 1)
    return out
