"""Study-area configuration: a TOML file parsed into frozen dataclasses.

Unknown keys and missing required keys are errors that name the key, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metalsm.datasets import expand_data_path
from metalsm.errors import MetalsmInputError

FactorKind = Literal["continuous", "categorical"]


#: Terrain factors metalsm derives from a DEM (:func:`metalsm.terrain.derive_terrain`):
#: the vocabulary of ``[terrain] factors``.
TERRAIN_FACTORS: tuple[str, ...] = (
    "elevation",
    "slope",
    "aspect_sin",
    "aspect_cos",
    "plan_curvature",
    "profile_curvature",
    "flow_accumulation",
    "log_flow_accumulation",
    "twi",
    "spi",
    "distance_to_drainage",
)

#: The classic models of :func:`metalsm.models.make_model`: the vocabulary of
#: ``[model] names`` (besides ``"meta-blockwise"``).
MODEL_NAMES: tuple[str, ...] = ("lr", "rf", "svm", "mlp", "fr", "fr-rf", "lightgbm")


@dataclass(frozen=True)
class RasterInput:
    """A thematic raster factor (geology, land cover, rainfall...)."""

    name: str
    path: str
    kind: FactorKind = "continuous"


@dataclass(frozen=True)
class VectorInput:
    """A vector layer whose distance becomes a factor named ``name`` (e.g. distance_to_faults)."""

    name: str
    path: str


@dataclass(frozen=True)
class GridConfig:
    """The reference grid: the DEM's, optionally resampled to ``resolution`` or reprojected."""

    resolution: float | None = None
    crs: str | None = None


@dataclass(frozen=True)
class TerrainConfig:
    #: every factor but the raw accumulations (TWI and SPI carry them, on scales a model
    #: can use)
    factors: tuple[str, ...] = tuple(
        n for n in TERRAIN_FACTORS if n not in ("flow_accumulation", "log_flow_accumulation"))
    drainage_threshold_km2: float = 0.5
    routing: Literal["d8", "mfd"] = "d8"


@dataclass(frozen=True)
class InventoryConfig:
    path: str
    rule: Literal["centroid", "scarp", "all", "random"] = "centroid"
    cells_per_polygon: int = 3
    crs: str | None = None
    x_column: str = "x"
    y_column: str = "y"


@dataclass(frozen=True)
class SamplingConfig:
    method: Literal["random", "credibility"] = "random"
    ratio: float = 1.0
    buffer_m: float = 100.0
    min_slope_deg: float | None = None
    seed: int = 42
    # method = "credibility": negatives only where credibility lies in [lo, hi)
    # (hi = 1.0 is inclusive); the map is built as [credibility] says.
    credibility_band: tuple[float, ...] = (0.7, 1.0)
    # a band with fewer candidate cells than needed: False = warn and draw all there are,
    # True = fail
    strict: bool = False


@dataclass(frozen=True)
class FactorSelectionConfig:
    """Frequency ratio tables, MIC, collinearity and the factor selection rule (factors.py)."""

    n_classes: int = 10
    binning: Literal["quantile", "natural_breaks"] = "quantile"
    max_categories: int = 50
    mic_min: float = 0.15
    differentiation_min: float = 0.3
    vif_max: float = 10.0
    mic_samples: int = 2000
    correlation_samples: int = 200_000
    seed: int = 42


@dataclass(frozen=True)
class CredibilityConfig:
    """Fuzzy-membership credibility of non-landslide cells and the band sweep experiment."""

    factors: tuple[str, ...] = ()
    combine: Literal["weighted_mean", "min"] = "weighted_mean"
    weighting: Literal["differentiation", "equal"] = "differentiation"
    rescale: bool = True
    bands: tuple[tuple[float, ...], ...] = (
        (0.0, 0.2),
        (0.2, 0.4),
        (0.4, 0.6),
        (0.6, 0.8),
        (0.8, 1.0),
    )
    models: tuple[str, ...] = ("fr-rf", "svm")
    test_regions: int = 5
    zone_method: Literal["quantile", "natural_breaks", "equal_interval"] = "natural_breaks"
    max_area_cells: int = 100_000
    n_estimators: int = 300
    seed: int = 42


@dataclass(frozen=True)
class ModelConfig:
    names: tuple[str, ...] = ("lr", "rf", "svm", "mlp", "fr")
    map_model: str = "rf"
    seed: int = 42


@dataclass(frozen=True)
class ValidationConfig:
    n_folds: int = 5
    spatial_method: Literal["kmeans", "grid"] = "kmeans"
    seed: int = 42
    # spatial leave-out: training samples within buffer_m metres of a test sample are
    # dropped from that fold's training set (0 = no buffer)
    buffer_m: float = 0.0
    # cross-validation repeated with folds re-drawn (seed + repeat); tables give the
    # spread over repeats beside the spread over folds
    repeats: int = 1


@dataclass(frozen=True)
class UncertaintyConfig:
    """The uncertainty map (opt-in: the section's presence turns it on): the map model
    refitted on ``refits`` bootstrap resamples of the samples (each class resampled
    with replacement to its own size, refit ``i`` with model seed ``seed + i``); the
    per-cell standard deviation of their probabilities is ``uncertainty.tif``."""

    refits: int = 20
    seed: int = 42


@dataclass(frozen=True)
class ZonesConfig:
    method: Literal["quantile", "natural_breaks", "equal_interval"] = "quantile"
    levels: int = 4
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputConfig:
    window_size: int = 512
    overviews: tuple[int, ...] = (2, 4, 8, 16)


@dataclass(frozen=True)
class ComputeConfig:
    """Out-of-core / distributed execution (:mod:`metalsm.scale._compute`).

    ``chunk_size`` (cells per window edge) forces the chunked path; ``scheduler`` is
    ``threads`` or a ``dask.distributed`` scheduler address; without either, runs go
    chunked when the estimated stack exceeds ``memory_fraction`` of the available
    memory (or of ``memory_limit_gb``).
    """

    chunk_size: int | None = None
    scheduler: str | None = None
    memory_limit_gb: float | None = None
    memory_fraction: float = 0.25


@dataclass(frozen=True)
class BlocksConfig:
    """Scene segmentation into blocks (weighted SLIC); each block is one few-shot task.

    ``weighting``: ``equal`` (all 1), ``given`` (``factor_weights``, others 1),
    ``fr_differentiation`` or ``rf_importance`` (learnt from the samples, see
    :func:`metalsm.blocks.weights_from_data`).
    """

    n_blocks: int = 64
    compactness: float = 0.5
    iterations: int = 5
    min_size_fraction: float = 0.25
    weighting: Literal["equal", "given", "fr_differentiation", "rf_importance"] = "equal"
    factor_weights: dict[str, float] = field(default_factory=dict)
    meta_train_fraction: float = 0.6
    seed: int = 42
    coarse_resolution_m: float | None = None


@dataclass(frozen=True)
class MetaConfig:
    """Block-wise few-shot meta-learning (RBM/DAE pretraining, task-weighted MAML).

    The network, pretraining and task weighting are the paper's; the adaptation
    settings are what nested validation on the meta-train blocks chose on Kaghan and
    Hong Kong (docs/results.md): Meta-SGD step sizes learned per weight from 0.01,
    meta lr 1e-3 for 1,000 iterations (5,000 overfit the meta-train blocks), 50 query
    samples per task, support sets drawn at random (the block's
    own landslide share), and the guard that keeps a block zero-shot unless adapting
    wins a cross-validation on its own shots. ``k_shots``: the K values evaluated on
    the meta-test blocks ("half" = half of the block's samples, "all" = all of them);
    ``map_k``: the K used to adapt every block for the map. ``task_weighting = "uniform"`` with
    ``pretrain = false`` is plain MAML. ``tune``: choose the adaptation settings by
    nested validation inside the meta-train blocks (:mod:`metalsm.models.tuning`)
    within ``tune_budget_s`` seconds. ``normalization = "batchnorm"`` is the authors'
    transductive batch norm (statistics of each adapted or predicted set; a map then
    depends on its window size), kept for fidelity, not the default.
    """

    hidden: tuple[int, ...] = (32, 32, 16)
    activation: Literal["sigmoid", "relu", "tanh"] = "sigmoid"
    normalization: Literal["none", "layernorm", "batchnorm"] = "none"
    pretrain: bool = True
    pretrain_epochs: int = 20
    rbm_lr: float = 1e-3
    dae_lr: float = 1e-5
    unlabelled_cells: int = 0
    inner_lr: float = 0.01
    inner_lr_mode: Literal["fixed", "scalar", "per-tensor", "per-element"] = "per-element"
    adapt_biases: bool = True
    inner_steps: int = 5
    meta_batch: int = 16
    meta_lr: float = 1e-3
    iterations: int = 1000
    k_support: int = 5
    k_query: int = 50
    support_rule: Literal["random", "stratified"] = "random"
    adapt_guard: bool = True
    guard_steps: tuple[int, ...] = ()
    task_weighting: Literal["softmax", "uniform"] = "softmax"
    first_order: bool = False
    balanced: bool = False
    tune: bool = False
    tune_budget_s: float = 480.0
    k_shots: tuple[str, ...] = ("1", "5", "half")
    map_k: str = "5"
    repeats: int = 5
    seed: int = 42


#: The tables of ``metalsm experiment ablation`` (:mod:`metalsm.experiments.ablation`).
ABLATION_TABLES = ("adaptation", "pretrain_loss", "balanced", "blocks")


@dataclass(frozen=True)
class ExperimentsConfig:
    """``metalsm experiment``: methods compared, K values, repetitions, splits, ablations.

    ``methods``: names of :data:`metalsm.experiments.methods.METHODS` (empty = all);
    ``meta_iterations``: meta-training iterations of the experiments (0 = ``[meta]
    iterations``); ``cross_area_split``: ``west-east``, ``north-south`` or a polygon
    file (area 1 = inside); ``ablation_blocks``: the numbers of blocks K compared;
    ``ablations``: which tables of ``metalsm experiment ablation`` to run (each retrains
    the meta-learner several times, so a study can run only the ones it needs).
    """

    methods: tuple[str, ...] = ()
    k_shots: tuple[str, ...] = ("1", "5", "half")
    repeats: int = 10
    seed: int = 42
    meta_iterations: int = 0
    cross_area_split: str = "west-east"
    cross_area_fraction: float = 0.6
    ablation_blocks: tuple[int, ...] = (16, 32, 64)
    #: repeats of the costlier experiments (ablation, cross-area): at most this many
    #: (0 = as many as ``repeats``)
    ablation_repeats: int = 5
    ablations: tuple[str, ...] = ABLATION_TABLES


@dataclass(frozen=True)
class TableConfig:
    """A study area given as a table of samples (no rasters), e.g. the Hong Kong data."""

    path: str
    label_column: str = "label"
    x_column: str = "X"
    y_column: str = "Y"
    crs: str | None = None
    factors: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    missing_values: tuple[float, ...] = ()


@dataclass(frozen=True)
class StudyAreaConfig:
    name: str
    dem: str | None = None
    inventory: InventoryConfig | None = None
    table: TableConfig | None = None
    blocks: BlocksConfig | None = None
    meta: MetaConfig | None = None
    uncertainty: UncertaintyConfig | None = None
    rasters: tuple[RasterInput, ...] = ()
    vectors: tuple[VectorInput, ...] = ()
    grid: GridConfig = field(default_factory=GridConfig)
    terrain: TerrainConfig = field(default_factory=TerrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    factor_selection: FactorSelectionConfig = field(default_factory=FactorSelectionConfig)
    credibility: CredibilityConfig = field(default_factory=CredibilityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    zones: ZonesConfig = field(default_factory=ZonesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PATH_KEYS = {"path", "dem"}


def load_config(path: str | Path) -> StudyAreaConfig:
    """Read and validate a study-area TOML file; relative paths resolve against its folder.

    ``extends = "base.toml"`` (relative to the file) starts from another config: tables
    are merged key by key, this file's values win, arrays (``[[rasters]]``, lists) are
    replaced whole; the base's relative paths resolve against the base's folder. A base
    may extend another; a cycle is an error naming the files. An error about a key
    that a base file set names that file.
    """
    path = Path(path)
    raw, origins = _read_extended(path, ())
    raw["source"] = str(path.resolve())
    try:
        config = _build(StudyAreaConfig, raw, prefix="", file=path, base=path.resolve().parent)
        _check_consistency(config, path)
    except MetalsmInputError as exc:
        message = str(exc)
        notes = [f"{key} is set in {origin}" for key, origin in origins.items()
                 if origin != path.resolve()
                 and (key in message if "." in key else f"'{key}'" in message)]
        if notes:
            raise MetalsmInputError(f"{message} ({'; '.join(notes)})") from None
        raise
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MetalsmInputError(f"config file not found: {path}")
    if path.is_dir():
        raise MetalsmInputError(f"config {path} is a folder; give the study-area .toml file "
                                "(metalsm init FILE writes a template)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MetalsmInputError(f"config {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MetalsmInputError(
            f"config {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "save it as UTF-8") from exc
    except OSError as exc:
        raise MetalsmInputError(f"cannot read config {path}: {exc.strerror}") from exc


def _read_extended(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Path]]:
    """The raw table of ``path`` merged over the configs it extends, and for every
    dotted key the file that set it."""
    here = path.resolve()
    if here in chain:
        cycle = " -> ".join(str(p) for p in (*chain, here))
        raise MetalsmInputError(f"config files extend each other in a cycle: {cycle}")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    origins = dict.fromkeys(_dotted_keys(raw), here)
    if parent is None:
        return raw, origins
    if not isinstance(parent, str):
        raise MetalsmInputError(f"{path}: 'extends' must be the path of another config file "
                                f"(a string), got {parent!r}")
    base_path = Path(expand_data_path(parent)).expanduser()
    if not base_path.is_absolute():
        base_path = here.parent / base_path
    if not base_path.is_file():
        raise MetalsmInputError(f"{path}: extends = {parent!r}, but {base_path} is not a file")
    base_raw, base_origins = _read_extended(base_path, (*chain, here))
    base_raw = _absolute_paths(base_raw, base_path.resolve().parent)
    return _deep_merge(base_raw, raw), {**base_origins, **origins}


def _dotted_keys(raw: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys += _dotted_keys(value, dotted) if isinstance(value, dict) else [dotted]
    return keys


def _absolute_paths(raw: Any, folder: Path) -> Any:
    """``raw`` with every path value (:data:`_PATH_KEYS`, at any depth) made absolute
    against ``folder``: a base config's paths keep pointing where its author meant."""
    if isinstance(raw, list):
        return [_absolute_paths(item, folder) for item in raw]
    if not isinstance(raw, dict):
        return raw
    out = {}
    for key, value in raw.items():
        if key in _PATH_KEYS and isinstance(value, str):
            expanded = Path(expand_data_path(value)).expanduser()
            out[key] = str(expanded if expanded.is_absolute() else (folder / expanded).resolve())
        else:
            out[key] = _absolute_paths(value, folder)
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merged key by key (``override`` wins); anything else replaced whole."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: Any, prefix: str, file: Path, base: Path) -> Any:
    where = f"{file} [{prefix}]" if prefix else str(file)
    if not isinstance(raw, dict):
        raise MetalsmInputError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise MetalsmInputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MetalsmInputError(f"{where}: missing required key '{name}'")
            continue
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], raw[name], key, file, base)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str, file: Path, base: Path) -> Any:
    """Check ``value`` against the type ``hint``; ``key`` is the dotted config key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = f"{file}: config key '{key}'"
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, file, base)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, file, base)
    if origin is dict:
        if not isinstance(value, dict):
            raise MetalsmInputError(f"{bad}: expected a table, got {value!r}")
        return {
            str(k): _convert(args[1], v, f"{key}.{k}", file, base) for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list):
            raise MetalsmInputError(f"{bad}: expected a list, got {value!r}")
        return tuple(
            _convert(args[0], v, f"{key}[{i}]", file, base) for i, v in enumerate(value)
        )
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise MetalsmInputError(f"{bad}: {value!r} is not one of {choices}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise MetalsmInputError(f"{bad}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetalsmInputError(f"{bad}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MetalsmInputError(f"{bad}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise MetalsmInputError(f"{bad}: expected a string, got {value!r}")
        if key.rsplit(".", 1)[-1].split("[")[0] in _PATH_KEYS:
            expanded = Path(expand_data_path(value)).expanduser()
            return str(expanded if expanded.is_absolute() else (base / expanded).resolve())
        return value
    return value


def _check_consistency(config: StudyAreaConfig, path: Path) -> None:
    """Settings that are valid one by one but not together, or out of range; every
    problem is reported at once, each naming its dotted key."""
    if config.table is None and (config.dem is None or config.inventory is None):
        missing = [k for k in ("dem", "inventory") if getattr(config, k) is None]
        raise MetalsmInputError(
            f"{path}: missing required key(s) {', '.join(repr(k) for k in missing)} "
            "(a raster study area needs 'dem' and [inventory]; a table study area needs [table])"
        )
    problems: list[str] = []
    if config.table is not None and config.dem is not None:
        problems.append(
            f"{path}: give either a raster study area ('dem', [inventory]) or [table], not both"
        )
    meta = config.meta
    if meta is not None:
        for key in ("map_k", *(f"k_shots[{i}]" for i in range(len(meta.k_shots)))):
            value = meta.map_k if key == "map_k" else meta.k_shots[int(key[8:-1])]
            if not (value.isdigit() and int(value) >= 1) and value not in ("half", "all"):
                problems.append(
                    f"{path}: meta.{key} must be a positive integer (as a string), "
                    f"\"half\" or \"all\", got {value!r}"
                )
        if config.blocks is None:
            problems.append(f"{path}: [meta] needs a [blocks] section (blocks are tasks)")
    blocks = config.blocks
    if blocks is not None:
        if blocks.n_blocks < 1:
            problems.append(f"{path}: blocks.n_blocks must be >= 1, got {blocks.n_blocks}")
        if blocks.compactness <= 0:
            problems.append(
                f"{path}: blocks.compactness must be > 0, got {blocks.compactness}"
            )
        if blocks.factor_weights and blocks.weighting != "given":
            problems.append(
                f"{path}: blocks.factor_weights is set but blocks.weighting is "
                f"'{blocks.weighting}'; set weighting = \"given\" to use them"
            )
        if not 0 < blocks.meta_train_fraction < 1:
            problems.append(
                f"{path}: blocks.meta_train_fraction must be in (0, 1), "
                f"got {blocks.meta_train_fraction}"
            )
    names = [r.name for r in config.rasters] + [v.name for v in config.vectors]
    names += list(config.terrain.factors)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{path}: factor name(s) used twice: {', '.join(duplicates)}")
    if config.model.map_model == "meta-blockwise":
        # the block-wise meta-learned model (meta_run.py); model.names stay the
        # classic models cross-validated beside it
        missing = [repr(k) for k in ("blocks", "meta") if getattr(config, k) is None]
        if missing:
            problems.append(
                f"{path}: model.map_model = 'meta-blockwise' needs the {' and '.join(missing)} "
                "section(s) of the config (blocks are the tasks; meta holds the "
                "meta-learning settings)"
            )
    elif config.model.map_model not in config.model.names:
        problems.append(
            f"{path}: model.map_model '{config.model.map_model}' is not in model.names "
            f"{list(config.model.names)}"
        )
    if config.sampling.ratio <= 0:
        problems.append(f"{path}: sampling.ratio must be > 0, got {config.sampling.ratio}")
    if config.uncertainty is not None:
        if config.uncertainty.refits < 2:
            problems.append(f"{path}: uncertainty.refits must be >= 2 (a spread needs at least "
                            f"two refits), got {config.uncertainty.refits}")
        if config.table is not None:
            problems.append(f"{path}: [uncertainty] maps the spread of the susceptibility, but "
                            "a [table] study area has no map; remove [uncertainty]")
        elif config.model.map_model == "meta-blockwise":
            problems.append(f"{path}: [uncertainty] refits the map model, which "
                            "'meta-blockwise' is not (one meta-learning run per refit); map "
                            "a classic model or remove [uncertainty]")
    _check_bands(config, path, problems)
    if config.compute.chunk_size is not None and config.compute.chunk_size < 16:
        problems.append(
            f"{path}: compute.chunk_size must be >= 16, got {config.compute.chunk_size}")
    _check_experiments(config, path, problems)
    if config.zones.labels and len(config.zones.labels) != config.zones.levels:
        problems.append(
            f"{path}: zones.labels has {len(config.zones.labels)} entries, "
            f"zones.levels is {config.zones.levels}"
        )
    _check_ranges(config, path, problems)
    if len(problems) == 1:
        raise MetalsmInputError(problems[0])
    if problems:
        listed = "\n".join(f"  - {p.removeprefix(f'{path}: ')}" for p in problems)
        raise MetalsmInputError(f"{path}: {len(problems)} problems in the config:\n{listed}")


def _check_ranges(config: StudyAreaConfig, path: Path, problems: list[str]) -> None:
    """Numbers and names that parse but cannot work (caught here, before any input is read)."""
    known = (*MODEL_NAMES, "meta-blockwise")
    for i, name in enumerate(config.model.names):
        if name not in known:
            problems.append(f"{path}: model.names[{i}] {name!r} is not a model; "
                            f"valid names: {', '.join(known)}")
    if config.model.map_model not in known:
        problems.append(f"{path}: model.map_model {config.model.map_model!r} is not a model; "
                        f"valid names: {', '.join(known)}")
    unknown = [n for n in config.terrain.factors if n not in TERRAIN_FACTORS]
    if unknown and config.table is None:
        problems.append(f"{path}: terrain.factors names unknown factor(s) {unknown}; "
                        f"valid names: {', '.join(TERRAIN_FACTORS)}")
    at_least = [
        ("validation.n_folds", config.validation.n_folds, 2,
         "cross-validation needs at least 2 folds"),
        ("validation.repeats", config.validation.repeats, 1,
         "cross-validation runs at least once"),
        ("zones.levels", config.zones.levels, 2, "a map needs at least 2 zones"),
        ("output.window_size", config.output.window_size, 16, "windows of at least 16 cells"),
    ]
    if config.inventory is not None:
        at_least.append(("inventory.cells_per_polygon", config.inventory.cells_per_polygon, 1,
                         "at least one cell per polygon"))
    if config.meta is not None:
        meta = config.meta
        at_least += [
            ("meta.inner_steps", meta.inner_steps, 1, "adaptation takes at least one step"),
            ("meta.k_support", meta.k_support, 1, "a support set holds at least one sample"),
            ("meta.k_query", meta.k_query, 1, "a query set holds at least one sample"),
            ("meta.meta_batch", meta.meta_batch, 1, "a meta-batch holds at least one task"),
            ("meta.repeats", meta.repeats, 1, "at least one shot draw"),
        ]
        at_least += [(f"meta.guard_steps[{i}]", v, 1, "a step count is at least 1")
                     for i, v in enumerate(meta.guard_steps)]
        for key, value in (("meta.inner_lr", meta.inner_lr), ("meta.meta_lr", meta.meta_lr),
                           ("meta.tune_budget_s", meta.tune_budget_s)):
            if not value > 0:
                problems.append(f"{path}: {key} must be > 0, got {value:g}")
    for key, value, low, why in at_least:
        if value < low:
            problems.append(f"{path}: {key} must be >= {low} ({why}), got {value}")
    if not config.validation.buffer_m >= 0:
        problems.append(f"{path}: validation.buffer_m must be >= 0 (metres of training "
                        "samples left out around each test fold; 0 = no buffer), got "
                        f"{config.validation.buffer_m:g}")
    if config.sampling.buffer_m < 0:
        problems.append(f"{path}: sampling.buffer_m must be >= 0 (metres kept free of "
                        f"negatives around landslides), got {config.sampling.buffer_m:g}")
    if config.grid.resolution is not None and not config.grid.resolution > 0:
        problems.append(f"{path}: grid.resolution must be > 0 (cell size in the grid CRS "
                        f"units), got {config.grid.resolution:g}; omit it to keep the DEM's")
    if not config.terrain.drainage_threshold_km2 > 0:
        problems.append(f"{path}: terrain.drainage_threshold_km2 must be > 0 (contributing "
                        f"area of a channel), got {config.terrain.drainage_threshold_km2:g}")
    slope = config.sampling.min_slope_deg
    if slope is not None and not 0 <= slope < 90:
        problems.append(f"{path}: sampling.min_slope_deg must be in [0, 90), got {slope:g}")
    if not 0 < config.compute.memory_fraction <= 1:
        problems.append(f"{path}: compute.memory_fraction must be in (0, 1], "
                        f"got {config.compute.memory_fraction:g}")
    crs_keys = [("grid.crs", config.grid.crs)]
    crs_keys += [("inventory.crs", config.inventory.crs if config.inventory else None),
                 ("table.crs", config.table.crs if config.table else None)]
    for key, value in crs_keys:
        if value is not None:
            problem = _crs_problem(value)
            if problem:
                problems.append(f"{path}: {key} = {value!r} is not a CRS ({problem}); "
                                "use e.g. \"EPSG:32643\" or a WKT/PROJ string")


def _crs_problem(value: str) -> str | None:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(value)
    except CRSError as exc:
        return str(exc)
    return None


def _check_experiments(config: StudyAreaConfig, path: Path, problems: list[str]) -> None:
    exp = config.experiments
    for i, value in enumerate(exp.k_shots):
        if not (value.isdigit() and int(value) >= 1) and value != "half":
            problems.append(
                f"{path}: experiments.k_shots[{i}] must be a positive integer (as a string) "
                f"or \"half\", got {value!r}")
    if exp.repeats < 1:
        problems.append(f"{path}: experiments.repeats must be >= 1, got {exp.repeats}")
    if exp.ablation_repeats < 0:
        problems.append(
            f"{path}: experiments.ablation_repeats must be >= 0, got {exp.ablation_repeats}")
    if exp.meta_iterations < 0:
        problems.append(
            f"{path}: experiments.meta_iterations must be >= 0, got {exp.meta_iterations}")
    if not 0 < exp.cross_area_fraction < 1:
        problems.append(f"{path}: experiments.cross_area_fraction must be in (0, 1), "
                                f"got {exp.cross_area_fraction}")
    if any(k < 1 for k in exp.ablation_blocks):
        problems.append(f"{path}: experiments.ablation_blocks must be >= 1, "
                                f"got {list(exp.ablation_blocks)}")
    unknown = [a for a in exp.ablations if a not in ABLATION_TABLES]
    if unknown or not exp.ablations:
        problems.append(f"{path}: experiments.ablations must name one or more of "
                        f"{', '.join(ABLATION_TABLES)}, got {list(exp.ablations)}")


def _check_bands(config: StudyAreaConfig, path: Path, problems: list[str]) -> None:
    bands = [("sampling.credibility_band", config.sampling.credibility_band)]
    bands += [(f"credibility.bands[{i}]", b) for i, b in enumerate(config.credibility.bands)]
    for key, band in bands:
        if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0:
            problems.append(
                f"{path}: {key} must be [lo, hi] with 0 <= lo < hi <= 1, got {list(band)}"
            )
    if not config.credibility.bands:
        problems.append(f"{path}: credibility.bands is empty")
    fs = config.factor_selection
    if fs.n_classes < 2:
        problems.append(f"{path}: factor_selection.n_classes must be >= 2")
    if fs.max_categories < 2:
        problems.append(f"{path}: factor_selection.max_categories must be >= 2")
    if fs.vif_max <= 1.0:
        problems.append(f"{path}: factor_selection.vif_max must be > 1")
    if config.credibility.test_regions < 2:
        problems.append(f"{path}: credibility.test_regions must be >= 2")
