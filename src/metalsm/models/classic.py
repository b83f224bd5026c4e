"""Classic landslide-susceptibility classifiers behind one registry.

Samples are a :class:`pandas.DataFrame` whose columns are conditioning factors
(categorical factors hold integer class codes, possibly stored as float) and a
0/1 label (1 = landslide).  Which columns are categorical is always passed
explicitly by name.

* :class:`FrequencyRatioClassifier` -- the bivariate frequency-ratio (FR)
  method as a scikit-learn estimator.
* :func:`make_model` -- builds ``"lr"``, ``"rf"``, ``"svm"``, ``"mlp"``,
  ``"fr"`` or ``"fr-rf"`` (FR encoding + random forest) with the project's
  defaults; adding a model is one entry in ``_REGISTRY``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import DataConversionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from metalsm.config import MODEL_NAMES
from metalsm.errors import MetalsmInputError

__all__ = [
    "MODEL_NAMES",
    "FactorPipeline",
    "FrequencyRatioClassifier",
    "check_binary_target",
    "check_samples",
    "compile_ensemble",
    "make_model",
]


# --------------------------------------------------------------------------- input checks


def check_samples(X: Any, required: Sequence[Any] | None = None) -> pd.DataFrame:
    """Return ``X`` as a float DataFrame, rejecting missing columns and NaN/inf.

    A bare array is accepted and gets pandas' integer column names ``0..n-1``.
    ``required`` lists the columns that must be present (named in the error).
    """
    if sparse.issparse(X):
        raise MetalsmInputError("sparse input is not supported; pass a dense table of factors")
    if isinstance(X, pd.Series):
        X = X.to_frame()
    if not isinstance(X, pd.DataFrame):
        arr = np.asarray(X)
        if arr.ndim == 1:
            raise MetalsmInputError(
                f"expected a 2-D table (rows x factors), got a 1-D array of length {arr.size}; "
                "Reshape your data, e.g. X.reshape(1, -1) for one sample"
            )
        if arr.ndim != 2:
            raise MetalsmInputError(
                f"samples must be a 2-D table (rows x factors), got an array of shape {arr.shape}"
            )
        X = pd.DataFrame(arr)
    if X.shape[1] == 0:
        raise MetalsmInputError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    if X.shape[0] == 0:
        raise MetalsmInputError(
            f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    complex_cols = [c for c in X.columns if pd.api.types.is_complex_dtype(X[c])]
    if complex_cols:
        raise MetalsmInputError(f"Complex data not supported: factor column(s) {complex_cols}")
    if required is not None:
        missing = [c for c in required if c not in X.columns]
        if missing:
            raise MetalsmInputError(
                f"samples lack factor column(s) {missing}; available: {list(X.columns)}"
            )
        X = X.loc[:, list(required)]
    try:
        values = X.to_numpy(dtype=float)
    except ValueError as exc:
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        raise MetalsmInputError(f"factor column(s) {bad} are not numeric") from exc
    finite = np.isfinite(values)
    if not finite.all():
        bad = [c for c, ok in zip(X.columns, finite.all(axis=0), strict=True) if not ok]
        raise MetalsmInputError(
            f"factor column(s) {bad} contain NaN or infinite values; "
            "fill or drop those samples first"
        )
    return pd.DataFrame(values, index=X.index, columns=X.columns)


def check_binary_target(y: Any, n_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a two-class label vector; return ``(y, classes)`` with classes sorted.

    The larger label (``1`` for 0/1 labels) is the landslide (positive) class.
    """
    if y is None:
        raise MetalsmInputError("this estimator requires y to be passed, but the target y is None")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; it is flattened",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1:
        raise MetalsmInputError(f"labels y must be 1-D, got shape {y.shape}")
    if n_samples is not None and y.shape[0] != n_samples:
        raise MetalsmInputError(
            f"labels y have {y.shape[0]} entries but the samples table has {n_samples} rows"
        )
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise MetalsmInputError("labels y contain NaN or infinite values")
        if not np.array_equal(y, np.round(y)):
            raise MetalsmInputError(
                "Unknown label type: labels y are continuous; expected 0/1 class labels"
            )
    classes = np.unique(y)
    if classes.size < 2:
        only = classes[0] if classes.size else "none"
        raise MetalsmInputError(
            f"labels y hold a single class ({only}), i.e. one class only; fitting needs "
            "both landslide (1) and non-landslide (0) samples"
        )
    if classes.size > 2:
        raise MetalsmInputError(
            "Only binary classification is supported: labels y must be 0 = non-landslide, "
            f"1 = landslide, got classes {classes}"
        )
    return y, classes


# --------------------------------------------------------------------------- frequency ratio


class FrequencyRatioClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Frequency-ratio (FR) susceptibility model as a scikit-learn classifier.

    For each factor the samples are split into classes: categorical factors by
    their class code, continuous factors into ``n_bins`` bins whose edges come
    from the training data (``binning="quantile"``: equal-count bins, the usual
    choice in FR studies because it keeps every bin populated; ``"uniform"``:
    equal-width bins).  Values outside the training range fall into the end bins.

    ``FR(class) = (landslides in class / all landslides) /
    (samples in class / all samples)``.  The textbook denominator is the *area*
    share of the class; in sample-based fitting the area share is estimated by
    the share of all training samples (landslides and non-landslides) in the
    class, so FR > 1 means the class holds more landslides than its sample share.
    A class never seen in training (a new category code, or an empty uniform
    bin) gets FR = 1, the neutral value that neither raises nor lowers
    susceptibility.

    It is also a transformer: :meth:`transform` (and ``fit_transform``) FR-encodes
    the factors, so it can be the first step of a pipeline (e.g. FR + random forest).

    The landslide susceptibility index is ``LSI = sum of FR over factors``
    (:meth:`lsi`).  :meth:`predict_proba` maps LSI
    to a probability with a one-feature logistic regression fitted on the
    training LSI.  That map is monotone in LSI, so ranking metrics such as AUC
    are exactly those of the FR method itself; the logistic step only makes the
    output a calibrated-ish probability that thresholds at 0.5 like the other
    models.

    Parameters
    ----------
    categorical_features : sequence of column names
        Factors whose values are class codes.
    n_bins : int
        Number of bins per continuous factor (fewer when quantiles coincide).
    binning : {"quantile", "uniform"}

    Attributes
    ----------
    classes_, n_features_in_, feature_names_in_ (when all column names are strings)
    fr_tables_ : dict[str, DataFrame]
        Per factor: ``class`` (code, or bin number), ``lower``, ``upper`` (bin
        edges; the code itself for categorical factors), ``n_samples``,
        ``n_landslides``, ``fr``, ``ln_fr`` (``-inf`` where FR = 0).
    lsi_model_ : LogisticRegression fitted on the training LSI.
    """

    def __init__(
        self,
        categorical_features: Sequence[Any] = (),
        n_bins: int = 10,
        binning: str = "quantile",
    ) -> None:
        self.categorical_features = categorical_features
        self.n_bins = n_bins
        self.binning = binning

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # binary: landslide vs non-landslide
        return tags

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> FrequencyRatioClassifier:
        """Build the FR tables and the LSI -> probability map from training samples."""
        if self.binning not in ("quantile", "uniform"):
            raise MetalsmInputError(
                f"binning must be 'quantile' or 'uniform', got {self.binning!r}"
            )
        if int(self.n_bins) < 1:
            raise MetalsmInputError(f"n_bins must be >= 1, got {self.n_bins!r}")
        X = check_samples(X)
        categorical = list(self.categorical_features)
        missing = [c for c in categorical if c not in X.columns]
        if missing:
            raise MetalsmInputError(
                f"categorical feature(s) {missing} are not columns of the samples; "
                f"available: {list(X.columns)}"
            )
        y, classes = check_binary_target(y, X.shape[0])
        self.classes_ = classes
        self._columns = list(X.columns)
        if all(isinstance(c, str) for c in self._columns):
            self.feature_names_in_ = np.asarray(self._columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        positive = y == classes[1]
        n_total = positive.size
        n_pos = int(positive.sum())

        self._edges: dict[Any, np.ndarray] = {}
        self._codes: dict[Any, np.ndarray] = {}
        self._fr: dict[Any, np.ndarray] = {}
        self.fr_tables_: dict[Any, pd.DataFrame] = {}
        for col in X.columns:
            values = X[col].to_numpy()
            if col in categorical:
                codes = np.unique(values)
                self._codes[col] = codes
                idx = np.searchsorted(codes, values)
                n_classes = codes.size
                lower = upper = codes
            else:
                edges = self._bin_edges(values)
                self._edges[col] = edges
                idx = self._bin_index(values, edges)
                n_classes = edges.size - 1
                lower, upper = edges[:-1], edges[1:]
                codes = np.arange(n_classes)
            n_c = np.bincount(idx, minlength=n_classes)
            n_c_pos = np.bincount(idx, weights=positive, minlength=n_classes)
            with np.errstate(divide="ignore", invalid="ignore"):
                fr = np.where(n_c > 0, (n_c_pos / n_pos) / (n_c / n_total), 1.0)
                ln_fr = np.log(fr)
            self._fr[col] = fr
            self.fr_tables_[col] = pd.DataFrame(
                {
                    "class": codes,
                    "lower": lower,
                    "upper": upper,
                    "n_samples": n_c.astype(int),
                    "n_landslides": n_c_pos.astype(int),
                    "fr": fr,
                    "ln_fr": ln_fr,
                }
            )

        lsi = self._lsi(X.to_numpy()).reshape(-1, 1)
        # Weak regularisation: this is a calibration, not a model with capacity to overfit.
        self.lsi_model_ = LogisticRegression(C=1e4, max_iter=1000).fit(lsi, positive.astype(int))
        return self

    def _bin_edges(self, values: np.ndarray) -> np.ndarray:
        lo, hi = float(values.min()), float(values.max())
        if self.binning == "quantile":
            edges = np.quantile(values, np.linspace(0.0, 1.0, int(self.n_bins) + 1))
        else:
            edges = np.linspace(lo, hi, int(self.n_bins) + 1)
        edges = np.unique(edges)
        if edges.size < 2:  # constant factor: one bin holding everything
            edges = np.array([lo, hi])
        return edges

    @staticmethod
    def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        # Interior edges only, so values below/above the training range land in the end bins;
        # bins are [lower, upper) except the last, which is closed.
        return np.searchsorted(edges[1:-1], values, side="right")

    # -- encoding -----------------------------------------------------------------------
    def _checked(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "fr_tables_")
        if not isinstance(X, pd.DataFrame | pd.Series):
            arr = np.asarray(X)
            if arr.ndim == 1:
                raise MetalsmInputError(
                    f"expected a 2-D table (rows x factors), got a 1-D array of length "
                    f"{arr.size}; Reshape your data, e.g. X.reshape(1, -1) for one sample"
                )
            if arr.ndim == 2 and arr.shape[1] != self.n_features_in_:
                raise MetalsmInputError(
                    f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input ({self._columns})"
                )
            X = pd.DataFrame(arr)
        return check_samples(X, required=self._columns)

    def _encode(self, values: np.ndarray) -> np.ndarray:
        """FR of every value of an ``(n, n_factors)`` array whose columns follow ``_columns``."""
        out = np.empty(values.shape, dtype=float)
        for j, col in enumerate(self._columns):
            column = values[:, j]
            fr = self._fr[col]
            if col in self._codes:
                codes = self._codes[col]
                idx = np.clip(np.searchsorted(codes, column), 0, codes.size - 1)
                seen = codes[idx] == column
                out[:, j] = np.where(seen, fr[idx], 1.0)  # unseen class -> neutral FR
            else:
                out[:, j] = fr[self._bin_index(column, self._edges[col])]
        return out

    def _lsi(self, values: np.ndarray) -> np.ndarray:
        return self._encode(values).sum(axis=1)

    def transform(self, X: Any) -> np.ndarray:
        """FR-encode every factor: an ``(n, n_factors)`` float array of FR values.

        Call ``set_output(transform="pandas")`` to get a DataFrame with the factor
        names as columns and the index of ``X``.
        """
        return self._encode(self._checked(X).to_numpy())

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the :meth:`transform` columns: the factor names, unchanged."""
        check_is_fitted(self, "fr_tables_")
        return np.asarray([str(c) for c in self._columns], dtype=object)

    def lsi(self, X: Any) -> np.ndarray:
        """Landslide susceptibility index: the sum of FR values over all factors."""
        return self._lsi(self._checked(X).to_numpy())

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of landslide: the logistic map of :meth:`lsi` (> 0 means class 1).

        Monotone increasing in LSI, so it ranks samples exactly as LSI does.
        """
        lsi = self.lsi(X).reshape(-1, 1)
        return self.lsi_model_.decision_function(lsi)

    # -- prediction ---------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` class probabilities, columns ordered as ``classes_``."""
        lsi = self.lsi(X).reshape(-1, 1)
        return self.lsi_model_.predict_proba(lsi)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class label per sample."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_cells(self, values: np.ndarray, feature_names: Sequence[Any]) -> np.ndarray:
        """P(landslide) of finite raster cells: ``values[:, j]`` is factor ``feature_names[j]``.

        The map's path: the same numbers as ``predict_proba(...)[:, 1]`` without
        building and checking a DataFrame per window.
        """
        check_is_fitted(self, "fr_tables_")
        values = _in_order(np.asarray(values, dtype=np.float64), feature_names, self._columns)
        lsi = self._lsi(values).reshape(-1, 1)
        return self.lsi_model_.predict_proba(lsi)[:, 1]


# --------------------------------------------------------------------------- registry


class FactorPipeline(Pipeline):
    """A :class:`~sklearn.pipeline.Pipeline` that checks factor tables first.

    Same parameters and behaviour as ``Pipeline``; ``fit`` and the prediction
    methods first run :func:`check_samples` (missing columns and NaN named) and
    ``fit`` runs :func:`check_binary_target` (single-class ``y`` rejected), so every
    registry model fails with the same clear :class:`MetalsmInputError`.

    Tree ensembles can predict through compiled code that gives the library's own
    numbers (:func:`compile_ensemble`); :attr:`predictor_` says which path a model
    takes: ``"native"`` (machine code per tree, :mod:`metalsm.models._native`),
    ``"packed"`` (the numba walk of :mod:`metalsm.models._trees`) or ``"library"``.
    LightGBM compiles from the first ``predict_proba`` of at least
    ``COMPILE_MIN_ROWS`` rows (under a second; cross-validation's small predictions
    keep the library) or the first map window, optimised for maps of at least
    ``OPTIMISE_MIN_CELLS`` cells. Forests compile natively only for a
    map of at least ``FOREST_NATIVE_MIN_CELLS`` cells (:meth:`prepare_prediction`):
    compiling 300 deep trees takes 15-30 s and their code is ~1.7 times faster than
    scikit-learn's walk, which repays it only on large maps.
    :meth:`predict_cells` is the map's path for every registry model: raster cells
    as a NumPy array, encoded without pandas.
    """

    #: Rows from which ``predict_proba`` compiles LightGBM (a 128 x 128 window and up).
    COMPILE_MIN_ROWS = 16_384
    #: Map cells from which a random forest is compiled to machine code.
    FOREST_NATIVE_MIN_CELLS = 10_000_000
    #: Map cells from which LightGBM's machine code is optimised by LLVM (``-O2``: about
    #: 4-7 s to compile instead of under 1 s, for code 1.3-1.4 times faster).
    OPTIMISE_MIN_CELLS = 20_000_000
    _CACHED = ("_fast_encoder", "_fast_trees", "_compiled_large")

    def _categorical(self) -> list[Any]:
        prep = self.steps[0][1]
        if isinstance(prep, ColumnTransformer):
            return [c for _, _, cols in prep.transformers if isinstance(cols, list) for c in cols]
        return []

    def _check_predict_X(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self)
        required = getattr(self, "feature_names_in_", None)
        return check_samples(X, required=None if required is None else list(required))

    def __getstate__(self) -> dict[str, Any]:
        # packed trees travel with the model (Dask workers need not repack them); the
        # NumPy encoder is a closure, cheap to rebuild, and not picklable
        state = dict(super().__getstate__())  # a copy: never drop the live cache
        state.pop("_fast_encoder", None)
        return state

    def fit(self, X: Any, y: Any = None, **params: Any) -> FactorPipeline:
        X = check_samples(X)
        missing = [c for c in self._categorical() if c not in X.columns]
        if missing:
            raise MetalsmInputError(
                f"categorical feature(s) {missing} are not columns of the samples; "
                f"available: {list(X.columns)}"
            )
        y, _ = check_binary_target(y, X.shape[0])
        for key in self._CACHED:
            self.__dict__.pop(key, None)
        return super().fit(X, y, **params)

    def predict(self, X: Any, **params: Any) -> np.ndarray:
        return super().predict(self._check_predict_X(X), **params)

    def predict_proba(self, X: Any, **params: Any) -> np.ndarray:
        X = self._check_predict_X(X)
        if params or not self._compiled_for(X.shape[0] >= self.COMPILE_MIN_ROWS):
            return super().predict_proba(X, **params)
        proba = self._fast_trees.positive_proba(self._encode_cells(X.to_numpy()))
        return np.column_stack([1.0 - proba, proba])

    def predict_proba_library(self, X: Any) -> np.ndarray:
        """``predict_proba`` of the libraries themselves: the reference of the compiled path."""
        return super().predict_proba(self._check_predict_X(X))

    def predict_cells(self, values: np.ndarray, feature_names: Sequence[Any]) -> np.ndarray:
        """P(landslide) of finite raster cells: ``values[:, j]`` is factor ``feature_names[j]``.

        The map's path: the first step runs as NumPy operations (checked against the
        library's transform when first built) and tree ensembles run compiled, so no
        DataFrame is built or checked per window.
        """
        check_is_fitted(self)
        values = _in_order(np.asarray(values, dtype=np.float64), feature_names,
                           self._input_columns())
        encoded = self._encode_cells(values)
        if self._compiled_for(True):
            return self._fast_trees.positive_proba(encoded)
        return np.asarray(self.steps[-1][1].predict_proba(encoded))[:, 1]

    def prepare_prediction(self, n_cells: int) -> str:
        """Compile for a map of about ``n_cells`` cells where that pays (see the class
        docstring), before its first window; returns :attr:`predictor_`. The compiled
        trees are kept with the fitted model (and in its pickles), so a map compiles once."""
        check_is_fitted(self)
        final = self.steps[-1][1] if len(self.steps) == 2 else None
        large = "_compiled_large" not in self.__dict__  # once per fit, even if it failed
        if large and _is_forest(final) and n_cells >= self.FOREST_NATIVE_MIN_CELLS:
            from metalsm.models._native import compile_native

            self._compiled_large = True
            self._fast_trees = compile_native(_trees_module().compile_forest(final))
        elif large and _is_lightgbm(final) and n_cells >= self.OPTIMISE_MIN_CELLS:
            self._compiled_large = True
            optimised = compile_ensemble(final, opt_level=2)
            if optimised is not None and not isinstance(optimised,
                                                        _trees_module().CompiledTrees):
                self._fast_trees = optimised
        self._compiled_for(True)
        return self.predictor_

    @property
    def predictor_(self) -> str:
        """``"native"`` or ``"packed"`` when the final estimator runs compiled (native:
        machine code per tree; packed: the numba walk), else ``"library"``."""
        check_is_fitted(self)
        if not self._compiled_for(True):
            return "library"
        return "packed" if isinstance(self._fast_trees, _trees_module().CompiledTrees) else "native"

    # -- fast paths (built once per fit, on first use) -----------------------------------
    def _input_columns(self) -> list[Any]:
        names = getattr(self, "feature_names_in_", None)
        return list(names) if names is not None else list(range(self.n_features_in_))

    def _compiled_for(self, large: bool) -> bool:
        """Whether to predict compiled; compiles LightGBM on the first ``large`` need."""
        if "_fast_trees" not in self.__dict__:
            if not large:
                return False
            self._fast_trees = compile_ensemble(self.steps[-1][1]) if len(self.steps) == 2 else None
        return self._fast_trees is not None

    def _encode_cells(self, values: np.ndarray) -> np.ndarray:
        """The first step's output for ``values`` (columns in :meth:`_input_columns` order)."""
        if "_fast_encoder" not in self.__dict__:
            self._fast_encoder = (
                _numpy_prep(self.steps[0][1], self._input_columns())
                if len(self.steps) == 2 else None
            )
        if self._fast_encoder is not None:
            return self._fast_encoder(values)
        frame = pd.DataFrame(values, columns=self._input_columns())
        return self[:-1].transform(frame)


def compile_ensemble(estimator: Any, opt_level: int = 0) -> Any:
    """The fitted ``estimator`` compiled for prediction, or ``None`` where the library predicts.

    LightGBM: machine code per tree (:func:`metalsm.models._native.compile_native` at
    LLVM's ``opt_level``), else (native compilation off or failed) the packed numba
    walk, else ``None`` for a model the packing does not cover. Forests: ``None``
    here; scikit-learn's walk is Cython already, and native code (1.7 times faster,
    15-30 s to compile) is built only for large maps by
    :meth:`FactorPipeline.prepare_prediction`.
    """
    if _is_lightgbm(estimator):
        from metalsm.models._native import compile_native  # llvmlite/numba: loaded when needed

        packed = _trees_module().compile_lightgbm(estimator)
        return compile_native(packed, opt_level) or packed
    return None


def _trees_module() -> Any:
    from metalsm.models import _trees  # numba: loaded when needed

    return _trees


def _is_forest(estimator: Any) -> bool:
    return type(estimator) is RandomForestClassifier


def _is_lightgbm(estimator: Any) -> bool:
    return type(estimator).__module__.startswith("lightgbm")


def _in_order(values: np.ndarray, feature_names: Sequence[Any], columns: list[Any]) -> np.ndarray:
    """The columns of ``values`` (named ``feature_names``) rearranged into ``columns``."""
    names = list(feature_names)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise MetalsmInputError(
            f"expected cells as an (n, {len(names)}) array for factors {names}, "
            f"got shape {values.shape}"
        )
    if names == columns:
        return values
    missing = [c for c in columns if c not in names]
    if missing:
        raise MetalsmInputError(f"cells lack factor(s) {missing} the model was fitted on")
    return values[:, [names.index(c) for c in columns]]


def _numpy_prep(prep: Any, columns: list[Any]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The fitted first step as NumPy operations on an array, or ``None`` if not covered.

    FR encoding is the estimator's own array code. A ``ColumnTransformer`` of one-hot
    encoders, passthrough and standard scaling becomes the same column operations in
    the same order, written into one preallocated array; it is used only if it
    reproduces ``prep.transform`` exactly on a probe table of every known category, an
    unknown one and spread continuous values.
    """
    if isinstance(prep, FrequencyRatioClassifier):
        return prep._encode
    if not isinstance(prep, ColumnTransformer):
        return None
    blocks: list[tuple[int, Callable[[np.ndarray, np.ndarray], None]]] = []
    categories: dict[int, np.ndarray] = {}
    for _, transformer, cols in prep.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        if isinstance(cols, slice) or np.ndim(cols) != 1:
            return None
        idx = [columns.index(c) if c in columns else -1 for c in cols]
        if -1 in idx:
            return None
        block = _numpy_column_block(transformer, idx)
        if block is None:
            return None
        blocks.append(block)
        if isinstance(transformer, OneHotEncoder):
            categories.update(zip(idx, transformer.categories_, strict=True))
    width = sum(w for w, _ in blocks)

    def encode(values: np.ndarray) -> np.ndarray:
        out = np.empty((values.shape[0], width))
        start = 0
        for w, fill in blocks:
            fill(values, out[:, start:start + w])
            start += w
        return out

    probe = _probe_table(len(columns), categories)
    expected = prep.transform(pd.DataFrame(probe, columns=columns))
    if not np.array_equal(encode(probe), expected):
        return None
    return encode


def _numpy_column_block(transformer: Any, idx: list[int]) -> tuple[int, Callable] | None:
    """One transformer of a ``ColumnTransformer``: its output width and a function that
    writes its output for the whole array into a given block of columns."""
    if (isinstance(transformer, str) and transformer == "passthrough") or (
        isinstance(transformer, FunctionTransformer) and transformer.func is None
    ):
        def passthrough(values: np.ndarray, out: np.ndarray) -> None:
            out[:] = values[:, idx]

        return len(idx), passthrough
    if isinstance(transformer, StandardScaler):
        mean = transformer.mean_ if transformer.with_mean else None
        scale = transformer.scale_ if transformer.with_std else None

        def standardise(values: np.ndarray, out: np.ndarray) -> None:
            out[:] = values[:, idx]
            if mean is not None:  # in place, the scaler's own two steps
                out -= mean
            if scale is not None:
                out /= scale

        return len(idx), standardise
    if (isinstance(transformer, OneHotEncoder) and transformer.drop_idx_ is None
            and transformer.handle_unknown == "ignore" and transformer.dtype == np.float64
            and not getattr(transformer, "_infrequent_enabled", False)
            and all(c.dtype.kind in "fiu" for c in transformer.categories_)):
        cats = [np.asarray(c, dtype=np.float64) for c in transformer.categories_]

        def one_hot(values: np.ndarray, out: np.ndarray) -> None:
            start = 0
            for j, c in zip(idx, cats, strict=True):
                out[:, start:start + c.size] = values[:, j, None] == c[None, :]
                start += c.size

        return sum(c.size for c in cats), one_hot
    return None


def _probe_table(n_columns: int, categories: dict[int, np.ndarray]) -> np.ndarray:
    """Rows holding every category (and an unseen code) and spread continuous values."""
    n_rows = max([8] + [c.size + 1 for c in categories.values()])
    probe = np.random.default_rng(0).normal(0.0, 1000.0, (n_rows, n_columns))
    for j, cats in categories.items():
        known = np.asarray(cats, dtype=np.float64)
        unseen = known.max(initial=0.0) + 0.5
        probe[:, j] = np.resize(np.append(known, unseen), n_rows)
    return probe


def _encoder(categorical: list[Any], continuous: Any) -> ColumnTransformer:
    """One-hot for class codes (no false order), ``continuous`` for everything else."""
    return ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)],
        remainder=continuous,
        verbose_feature_names_out=False,
    )


def _pipeline(categorical: list[Any], model: BaseEstimator, scale: bool = True) -> Pipeline:
    continuous = StandardScaler() if scale else "passthrough"
    return FactorPipeline([("prep", _encoder(categorical, continuous)), ("model", model)])


def _make_lr(categorical: list[Any], seed: int) -> BaseEstimator:
    """Logistic regression: the linear baseline of LSM studies.

    Standardised continuous factors and one-hot categories keep the default L2
    penalty (C=1) comparable across factors; ``max_iter=5000`` so lbfgs converges
    on unscaled-looking data without warnings.
    """
    return _pipeline(categorical, LogisticRegression(max_iter=5000, random_state=seed))


def _make_rf(categorical: list[Any], seed: int) -> BaseEstimator:
    """Random forest, 300 trees: AUC has plateaued well before that on LSM tables.

    Categories are one-hot encoded (codes carry no order, and the class counts of
    land use / lithology are small); continuous factors pass through unscaled
    because trees are invariant to monotone rescaling.  ``n_jobs=2`` to stay a good
    neighbour on shared machines; ``min_samples_leaf=1`` and ``max_features="sqrt"``
    are the sklearn defaults that work well on tabular data.
    """
    forest = RandomForestClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    return _pipeline(categorical, forest, scale=False)


def _make_svm(categorical: list[Any], seed: int) -> BaseEstimator:
    """RBF support vector machine with Platt-scaled probabilities.

    ``C=1, gamma="scale"`` on standardised factors is the usual LSM starting point.
    ``SVC(probability=True)`` is deprecated in scikit-learn 1.9, so the probability
    map is the equivalent ``CalibratedClassifierCV(SVC(), method="sigmoid",
    ensemble=False)``: one SVC refitted on all data, sigmoid fitted on 5-fold
    out-of-fold decision values.  Override SVC settings with ``estimator__C`` etc.
    """
    svc = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    model = CalibratedClassifierCV(svc, method="sigmoid", cv=5, ensemble=False)
    return _pipeline(categorical, model)


def _make_mlp(categorical: list[Any], seed: int) -> BaseEstimator:
    """Small multilayer perceptron (64-32 ReLU) with early stopping.

    A few thousand samples of ~15 factors do not support a large net; two hidden
    layers give nonlinearity, ``alpha=1e-3`` adds mild L2, and early stopping on a
    10 % validation split (20 patient epochs) prevents overfitting without tuning
    ``max_iter``.
    """
    mlp = MLPClassifier(
        hidden_layer_sizes=(64, 32),
        alpha=1e-3,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        max_iter=1000,
        random_state=seed,
    )
    return _pipeline(categorical, mlp)


def _make_fr(categorical: list[Any], seed: int) -> BaseEstimator:
    """Frequency ratio with 10 quantile bins, the common choice in FR studies.

    Deterministic: ``seed`` is accepted for a uniform registry and unused.
    """
    del seed
    return FrequencyRatioClassifier(categorical_features=tuple(categorical), n_bins=10)


def _make_fr_rf(categorical: list[Any], seed: int) -> BaseEstimator:
    """Frequency ratio–random forest coupled model.

    Every factor value is replaced by the FR of its class (the
    :class:`FrequencyRatioClassifier` as a transformer: 10 quantile bins per
    continuous factor, one class per category, FR from the training samples),
    then a 300-tree random forest (``n_jobs=2``) is fitted on the FR-encoded
    table. The encoding is refitted inside every training fold, so held-out
    samples never shape their own FR values. ``params`` override the forest.
    """
    encoder = FrequencyRatioClassifier(categorical_features=tuple(categorical), n_bins=10)
    forest = RandomForestClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    return FactorPipeline([("fr", encoder), ("model", forest)])


def _make_lightgbm(categorical: list[Any], seed: int) -> BaseEstimator:
    """Gradient-boosted trees (LightGBM): 300 rounds of 31-leaf trees, learning rate 0.05.

    LightGBM's usual tabular starting point; categories one-hot encoded like the
    forest's, continuous factors unscaled. Single-threaded and deterministic
    (``n_jobs=1, deterministic=True``) so repeated runs agree; quiet (``verbose=-1``).
    """
    from lightgbm import LGBMClassifier

    booster = LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31,
                             subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                             n_jobs=1, deterministic=True, random_state=seed, verbose=-1)
    return _pipeline(categorical, booster, scale=False)


_REGISTRY: dict[str, Callable[[list[Any], int], BaseEstimator]] = {
    "lr": _make_lr,
    "rf": _make_rf,
    "svm": _make_svm,
    "mlp": _make_mlp,
    "fr": _make_fr,
    "fr-rf": _make_fr_rf,
    "lightgbm": _make_lightgbm,
}



def make_model(
    name: str,
    categorical_features: Sequence[Any] = (),
    seed: int = 0,
    **params: Any,
) -> BaseEstimator:
    """A fresh, unfitted estimator for ``name`` (one of :data:`MODEL_NAMES`).

    ``lr``/``rf``/``svm``/``mlp`` are :class:`FactorPipeline` ``([("prep",
    ColumnTransformer), ("model", estimator)])`` expecting a DataFrame with the
    categorical columns by name; ``fr`` is a :class:`FrequencyRatioClassifier`.  ``params`` override
    settings of the final estimator (e.g. ``n_estimators=50`` for ``rf``).
    """
    try:
        builder = _REGISTRY[name]
    except (KeyError, TypeError):
        raise MetalsmInputError(
            f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}"
        ) from None
    estimator = builder(list(categorical_features), int(seed))
    if params:
        target = estimator.named_steps["model"] if isinstance(estimator, Pipeline) else estimator
        valid = target.get_params(deep=True)
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise MetalsmInputError(
                f"model {name!r} has no parameter(s) {unknown}; valid: {sorted(valid)}"
            )
        target.set_params(**params)
    return estimator
