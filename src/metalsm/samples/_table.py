"""Study areas given as a table of samples (coordinates, factors, label) and no rasters.

The Hong Kong data are such a table. It feeds the same downstream stages as the
raster path (blocks, tasks, models, validation) through the same ``Samples`` value.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm.config import TableConfig
from metalsm.errors import MetalsmInputError

__all__ = [
    "Samples",
    "read_sample_table",
    "read_table_frame",
    "warn_constant_factors",
    "write_samples_vector",
]

log = logging.getLogger(__name__)


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


def warn_constant_factors(samples: Samples) -> list[str]:
    """Factors with one value in every sample (a flat DEM gives constant slope, curvature...):
    no model can learn from them. Logged as a warning; returns their names."""
    constant = [n for n in samples.factor_names if samples.table[n].nunique() <= 1]
    if constant:
        values = {n: float(samples.table[n].iloc[0]) for n in constant}
        log.warning("factor(s) with one value in all %d samples, useless to every model "
                    "(flat DEM? constant raster?): %s", len(samples.table),
                    ", ".join(f"{n} = {v:g}" for n, v in values.items()))
    return constant


def read_table_frame(path: str, nrows: int | None = None) -> pd.DataFrame:
    """A CSV table as read by pandas, with errors that name the file and say what to do.

    UTF-8 (with or without BOM) and UTF-16 (with BOM) are decoded; a duplicated column
    name is refused (pandas would rename it ``slope.1`` and use it as another factor);
    a table that looks ``;``-delimited is refused with that hint.
    """
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except FileNotFoundError as exc:
        raise MetalsmInputError(f"table not found: {path}") from exc
    except OSError as exc:
        raise MetalsmInputError(f"cannot read table {path}: {exc.strerror}") from exc
    encoding = "utf-16" if start[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        with open(path, encoding=encoding, newline="") as handle:
            names = next(csv.reader(handle), [])
        frame = pd.read_csv(path, encoding=encoding, nrows=nrows)
    except UnicodeDecodeError as exc:
        raise MetalsmInputError(
            f"cannot read table {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "save it as UTF-8 CSV") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise MetalsmInputError(f"cannot read table {path}: {exc}") from exc
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MetalsmInputError(
            f"table {path}: column name(s) {twice} appear more than once; rename or drop the "
            "copies (each factor needs one column)")
    if len(frame.columns) == 1 and ";" in str(frame.columns[0]):
        raise MetalsmInputError(
            f"table {path} looks ';'-delimited (one column named "
            f"{str(frame.columns[0])[:60]!r}...); save it comma-delimited")
    return frame


def read_sample_table(config: TableConfig, *, warn: bool = True) -> Samples:
    """Read and check a sample table; factors default to every column but x, y and label.

    Rows with a missing value are dropped; ``warn`` logs how many and in which columns
    (also kept in ``table.attrs``)."""
    raw = read_table_frame(config.path)
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
    empty = [c for c in table.columns if table[c].isna().all()]
    if empty:
        raise MetalsmInputError(
            f"sample table {config.path}: column(s) {empty} hold no value in any row; drop "
            "them from table.factors (or fix table.missing_values)")
    missing = table.isna().sum()
    missing = {str(c): int(n) for c, n in missing[missing > 0].items()}
    incomplete = table.isna().any(axis=1)
    if incomplete.all():
        raise MetalsmInputError(
            f"sample table {config.path}: every row has a missing value (missing per column: "
            f"{missing})")
    table = table[~incomplete].reset_index(drop=True)
    table.attrs["dropped_incomplete_rows"] = int(incomplete.sum())
    table.attrs["missing_per_column"] = missing
    if warn and incomplete.any():
        log.warning("sample table %s: %d of %d rows dropped for missing values (per column: "
                    "%s)", config.path, int(incomplete.sum()), len(incomplete),
                    ", ".join(f"{c} {n}" for c, n in missing.items()))
    samples = Samples(table, tuple(factors), tuple(config.categorical))
    if warn:
        warn_constant_factors(samples)
    return samples


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
