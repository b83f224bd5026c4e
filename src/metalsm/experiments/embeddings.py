"""2-D embeddings of the inputs and of the learnt representations, coloured by label.

Three representations of the **meta-test samples** (never seen by meta-training):

* ``raw``: the encoded inputs (one-hot categories), z-scored with the meta-train
  mean/std -- exactly what the networks receive (unscaled, elevation in metres would
  dominate every distance);
* ``maml``: the last hidden layer (16 sigmoid units) of the plain-MAML intermediate
  network (no pretraining, uniform task weights);
* ``proposed``: the last hidden layer of the proposed intermediate network
  (pretraining + weighted tasks).

The hidden layer is ``torch.func.functional_call`` of the network's hidden trunk
(every layer but the output logit) with the meta-learned (not block-adapted)
parameters. Each representation is embedded by PCA, Isomap, t-SNE and UMAP on the same
seeded subsample (at most ``max_points``). Reading is not only visual: every panel gets
the **5-NN accuracy** (5-fold cross-validated k-nearest-neighbour classification of the
label in the 2-D embedding; 0.5 = classes mixed at a balanced ratio, 1 = separated) and
the silhouette of the labels (-1..1).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

from metalsm.atomic import write_csv
from metalsm.errors import MetalsmInputError
from metalsm.models.meta import MetaLearner, MetaNet

METHODS = ("pca", "isomap", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "isomap": "Isomap", "tsne": "t-SNE", "umap": "UMAP"}
REPRESENTATION_LABELS = {"raw": "raw inputs (z-scored)", "maml": "plain MAML, last hidden",
                         "proposed": "proposed, last hidden"}


class _Trunk(nn.Module):
    """The hidden layers of a :class:`MetaNet` (same parameter names), without ``out``."""

    def __init__(self, net: MetaNet) -> None:
        super().__init__()
        self.hidden = net.hidden
        self.norms = net.norms
        self.act = net.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.act(x)
        return x


def hidden_representation(learner: MetaLearner, X: np.ndarray) -> np.ndarray:
    """Last hidden layer of ``learner``'s meta-learned network for raw feature rows ``X``."""
    trunk = _Trunk(learner.net_)
    params = {k: v for k, v in learner.params_.items() if not k.startswith("out.")}
    with torch.no_grad():
        h = functional_call(trunk, params, (torch.as_tensor(learner._standardize(X)),))
    return h.numpy().astype(np.float64)


def embed(Z: np.ndarray, method: str, seed: int, n_components: int = 2) -> np.ndarray:
    """``Z`` [n, d] -> [n, n_components] by PCA, Isomap, t-SNE or UMAP (seeded).

    Runs on one OpenMP/BLAS thread: on a busy 2-core machine scikit-learn's threaded
    t-SNE spun for 13-37 s on 200 points that one thread embeds in about 1 s.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _embed(Z, method, seed, n_components)


def _embed(Z: np.ndarray, method: str, seed: int, n_components: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE, Isomap

    n = Z.shape[0]
    if method == "pca":
        return PCA(n_components, random_state=seed).fit_transform(Z)
    if method == "isomap":
        return Isomap(n_neighbors=min(10, n - 1), n_components=n_components).fit_transform(Z)
    if method == "tsne":
        return TSNE(n_components, perplexity=min(30.0, (n - 1) / 3), init="pca",
                    random_state=seed).fit_transform(Z)
    if method == "umap":
        import umap

        with warnings.catch_warnings():  # "n_jobs overridden by random_state"
            warnings.simplefilter("ignore", UserWarning)
            return umap.UMAP(n_components=n_components, n_neighbors=min(15, n - 1),
                             random_state=seed).fit_transform(Z)
    raise MetalsmInputError(f"unknown embedding method {method!r}; use {', '.join(METHODS)}")


def separability(E: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """5-NN accuracy (5-fold CV, seeded folds) and label silhouette in an embedding."""
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    acc = cross_val_score(KNeighborsClassifier(5), E, y, cv=folds, scoring="accuracy")
    return {"knn5_accuracy": float(acc.mean()), "silhouette": float(silhouette_score(E, y))}


def subsample(y: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Seeded random subset (sorted indices) of at most ``max_points`` rows."""
    n = np.asarray(y).size
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def run_embeddings(representations: Mapping[str, np.ndarray], y: np.ndarray, out_dir: Path,
                   *, methods: Sequence[str] = METHODS, seed: int = 42,
                   title: str = "Embeddings of the meta-test samples"
                   ) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Embed each representation by each method; write ``embeddings.png``/``.csv``.

    Returns the score table (one row per panel: representation, method, knn5_accuracy,
    silhouette, majority_share (the 5-NN accuracy of knowing nothing), n_points,
    seconds) and the paths written.
    """
    y = np.asarray(y).astype(int)
    if np.unique(y).size < 2:
        raise MetalsmInputError("embeddings need samples of both classes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, coords = [], {}
    for rep, Z in representations.items():
        for method in methods:
            t = time.perf_counter()
            E = embed(np.asarray(Z, dtype=np.float64), method, seed)
            seconds = time.perf_counter() - t
            coords[rep, method] = E
            rows.append({"representation": rep, "method": method, **separability(E, y, seed),
                         "majority_share": round(float(max(y.mean(), 1 - y.mean())), 4),
                         "n_points": int(y.size), "seconds": round(seconds, 3)})
    table = pd.DataFrame(rows)
    paths = {"table": write_csv(out_dir / "embeddings.csv", table.round(4)),
             "figure": plot_embeddings(coords, y, table, out_dir / "embeddings.png",
                                       list(representations), list(methods), title)}
    return table, paths


def plot_embeddings(coords: Mapping[tuple[str, str], np.ndarray], y: np.ndarray,
                    table: pd.DataFrame, path: Path, representations: Sequence[str],
                    methods: Sequence[str], title: str) -> Path:
    """Grid: rows = representation, columns = method; 5-NN accuracy in each panel."""
    from metalsm.report.figures import save_figure

    fig = Figure(figsize=(3.0 * len(methods), 2.9 * len(representations) + 0.5))
    axes = fig.subplots(len(representations), len(methods), squeeze=False)
    scores = table.set_index(["representation", "method"])
    order = np.argsort(np.random.default_rng(0).random(y.size))  # no class drawn on top
    colours = np.where(y[order] == 1, "#d7301f", "#2b8cbe")
    for i, rep in enumerate(representations):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            E = coords[rep, method][order]
            ax.scatter(E[:, 0], E[:, 1], s=3, c=colours, linewidths=0, alpha=0.7)
            s = scores.loc[(rep, method)]
            ax.text(0.02, 0.98, f"5-NN acc {s['knn5_accuracy']:.2f}\nsilh. {s['silhouette']:.2f}",
                    transform=ax.transAxes, va="top", fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(METHOD_LABELS.get(method, method), fontsize=10)
            if j == 0:
                ax.set_ylabel(REPRESENTATION_LABELS.get(rep, rep), fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=lab)
               for c, lab in (("#d7301f", "landslide"), ("#2b8cbe", "non-landslide"))]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    return save_figure(fig, path)


def representations_of(data, learners: Mapping[str, MetaLearner], max_points: int,
                       seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw (z-scored) and hidden representations of a seeded subsample of meta-test samples.

    ``data`` is a :class:`metalsm.pipeline.MetaData`; ``learners`` maps a representation
    name (``maml``, ``proposed``) to its fitted learner.
    """
    test = np.flatnonzero(data.test)
    if test.size == 0:
        raise MetalsmInputError("no meta-test samples to embed")
    pick = test[subsample(data.y[test], max_points, seed)]
    X = data.X[pick]
    train = data.X[data.train]
    std = train.std(0)
    reps = {"raw": (X - train.mean(0)) / np.where(std > 0, std, 1.0)}
    for name, learner in learners.items():
        reps[name] = hidden_representation(learner, X)
    return reps, data.y[pick]


#: At most this many meta-test samples are embedded (t-SNE, Isomap, UMAP stay fast).
MAX_POINTS = 2000
SMALL_POINTS = 300


def run_embeddings_experiment(config, out_dir: str | Path, *, repeats: int | None = None,
                              preset: str | None = None):
    """The ``embeddings`` experiment: train plain MAML and the proposed model on the
    meta-train blocks (``[experiments] seed``), embed the meta-test samples, write
    ``embeddings.png``/``.csv`` and a report section. ``repeats`` is not used (one
    training per method; the scores are of one seeded subsample)."""
    from metalsm.experiments.common import (
        ExperimentResult,
        apply_preset,
        experiment_data,
        experiment_meta,
        since,
    )
    from metalsm.experiments.methods import fit_maml, fit_proposed
    from metalsm.report.html import Section

    del repeats
    started = time.perf_counter()
    config = apply_preset(config, preset)
    seed = config.experiments.seed
    meta = experiment_meta(config)
    out = Path(out_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data, _ = experiment_data(config, out / "blocks")
    timings["blocks"] = since(t)
    t = time.perf_counter()
    learners = {"maml": fit_maml(data, meta, seed).learner,
                "proposed": fit_proposed(data, meta, seed).learner}
    timings["training"] = since(t)
    t = time.perf_counter()
    max_points = SMALL_POINTS if preset else MAX_POINTS
    reps, y = representations_of(data, learners, max_points, seed)
    table, paths = run_embeddings(reps, y, out, seed=seed,
                                  title=f"{config.name}: embeddings of {y.size} meta-test "
                                        "samples (red = landslide)")
    timings["embeddings"] = since(t)
    majority = float(max(y.mean(), 1 - y.mean()))
    text = (
        f"{y.size} meta-test samples (seeded subsample, seed {seed}; never used in "
        "training) in three representations: the z-scored encoded inputs, and the last "
        f"hidden layer ({meta.hidden[-1]} units) of the plain-MAML and of the proposed "
        f"intermediate networks ({meta.iterations} meta-iterations, before any block "
        "adaptation), each embedded in 2-D by PCA, Isomap, t-SNE and UMAP. "
        "Separability per panel: 5-fold cross-validated 5-nearest-neighbour accuracy of "
        f"the label in the embedding (majority-class share: {majority:.3f}) and the "
        "silhouette of the labels (-1..1). No 3-D panels.")
    seconds = time.perf_counter() - started
    timings["total"] = round(seconds, 3)
    section = Section("Embeddings of inputs and learnt representations", text=text,
                      images=[("Rows: representation; columns: method", paths["figure"])],
                      tables=[("Separability per panel", table.round(3))],
                      preformatted=[("Timings (s)", timings)])
    return ExperimentResult(paths, seconds, {"embeddings": table}, section)
