"""Study areas given as a table of samples (coordinates, factors, label) and no rasters.

The Hong Kong data are such a table. It feeds the same downstream stages as the
raster path (blocks, tasks, models, validation) through the same ``Samples`` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm.config import TableConfig
from metalsm.errors import MetalsmInputError


@dataclass
class Samples:
    """Positive and negative samples with their factor values (one row per sample).

    ``table`` holds ``x``, ``y``, ``label`` (1 = landslide) and one column per factor
    (raster study areas add the cell ``row`` and ``col``).
    """

    table: pd.DataFrame
    factor_names: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - the scikit-learn name
        return self.table[list(self.factor_names)]

    @property
    def y(self) -> np.ndarray:
        return self.table["label"].to_numpy()

    @property
    def coords(self) -> np.ndarray:
        return self.table[["x", "y"]].to_numpy()


def read_sample_table(config: TableConfig) -> Samples:
    """Read and check a sample table; factors default to every column but x, y and label."""
    try:
        raw = pd.read_csv(config.path, encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise MetalsmInputError(f"sample table not found: {config.path}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MetalsmInputError(f"cannot read sample table {config.path}: {exc}") from exc
    special = (config.x_column, config.y_column, config.label_column)
    factors = list(config.factors) or [c for c in raw.columns if c not in special]
    needed = [*special, *factors, *config.categorical]
    missing = [c for c in dict.fromkeys(needed) if c not in raw.columns]
    if missing:
        raise MetalsmInputError(
            f"sample table {config.path}: missing column(s) {missing}; "
            f"columns are {list(raw.columns)}"
        )
    unknown_categorical = [c for c in config.categorical if c not in factors]
    if unknown_categorical:
        raise MetalsmInputError(
            f"sample table {config.path}: table.categorical names {unknown_categorical}, "
            "which are not among the factors"
        )
    if raw.empty:
        raise MetalsmInputError(f"sample table {config.path} has no rows")
    values = raw[factors].apply(pd.to_numeric, errors="coerce")
    non_numeric = [c for c in factors if values[c].isna().any() and raw[c].notna().all()]
    if non_numeric:
        raise MetalsmInputError(
            f"sample table {config.path}: non-numeric values in column(s) {non_numeric}"
        )
    if config.missing_values:
        values = values.mask(values.isin(list(config.missing_values)))
    labels = pd.to_numeric(raw[config.label_column], errors="coerce")
    if not labels.isin([0, 1]).all():
        bad = raw.loc[~labels.isin([0, 1]), config.label_column].unique()[:5].tolist()
        raise MetalsmInputError(
            f"sample table {config.path}: column '{config.label_column}' must hold 0/1, "
            f"found {bad}"
        )
    if labels.nunique() < 2:
        raise MetalsmInputError(
            f"sample table {config.path}: column '{config.label_column}' holds one class only"
        )
    table = pd.DataFrame({
        "x": pd.to_numeric(raw[config.x_column], errors="coerce"),
        "y": pd.to_numeric(raw[config.y_column], errors="coerce"),
        "label": labels.astype(np.int8),
    })
    table = pd.concat([table, values], axis=1)
    incomplete = table.isna().any(axis=1)
    if incomplete.all():
        raise MetalsmInputError(f"sample table {config.path}: every row has a missing value")
    table = table[~incomplete].reset_index(drop=True)
    table.attrs["dropped_incomplete_rows"] = int(incomplete.sum())
    return Samples(table, tuple(factors), tuple(config.categorical))


def write_samples_vector(path, samples: Samples, crs, extra: dict[str, np.ndarray] | None = None
                         ) -> Path:
    """``samples.gpkg``: one point per sample in ``crs`` with its label, row/col when
    known, the factors, and ``extra`` per-sample columns (fold ids, out-of-fold
    probabilities), so a GIS shows where each sample was and how it was used."""
    import geopandas as gpd

    from metalsm.atomic import atomic_path

    table = samples.table.copy()
    for name, values in (extra or {}).items():
        table[name] = np.asarray(values)
    points = gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table["x"], table["y"]),
                              crs=crs)
    with atomic_path(path) as tmp:
        points.to_file(tmp, driver="GPKG", layer="samples")
    return Path(path)
