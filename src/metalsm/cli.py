"""The ``metalsm`` command line: parse, call a pipeline function, say where outputs went."""

from __future__ import annotations

import errno
import logging
import shutil
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from metalsm.errors import MetalsmInputError

app = typer.Typer(
    help="Landslide susceptibility mapping on real GIS data.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

OutDir = Annotated[Path, typer.Option("--out", "-o", help="Run directory for all outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("pyogrio").setLevel(logging.WARNING)  # "Created N records" per write


def _print_version(value: bool) -> None:
    if value:
        from metalsm import __version__

        typer.echo(f"metalsm {__version__}")
        raise typer.Exit()


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error as one line (verbatim: '[meta]' is not markup); exit code 2 = bad input."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=code)


#: Set by ``metalsm --debug`` for the one command of this invocation.
_show_tracebacks = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the full traceback of an error instead of one line.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Landslide susceptibility mapping on real GIS data."""
    _show_tracebacks["debug"] = debug


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line for an error that escaped the stages, and the exit code: 2 for bad input
    (a file that cannot be read or written, a CRS...), 1 for a defect of metalsm."""
    import rasterio.errors
    from pyproj.exceptions import CRSError

    from metalsm.pipeline import first_line

    first = first_line(exc)
    if isinstance(exc, MetalsmInputError):
        return str(exc), 2
    if isinstance(exc, rasterio.errors.RasterioIOError):
        return (f"cannot read or write a raster: {first}; the file may be truncated or "
                "corrupt (copy or export it again) or the folder not writable"), 2
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename} is a folder; a file was expected there", 2
    if isinstance(exc, OSError) and exc.filename:
        hint = ("choose another --out or fix the permissions" if exc.errno in
                (errno.EACCES, errno.EPERM, errno.EROFS) else
                "free some disk space" if exc.errno == errno.ENOSPC else
                "check the path")
        return f"{exc.filename}: {exc.strerror or first}; {hint}", 2
    if isinstance(exc, CRSError | rasterio.errors.CRSError):
        return f"invalid CRS: {first}; use e.g. EPSG:32643 or a WKT/PROJ string", 2
    if isinstance(exc, UnicodeDecodeError):
        return f"a text input is not UTF-8 ({first}); save it as UTF-8", 2
    if isinstance(exc, MemoryError):
        return "out of memory; rerun with --chunk-size 1024 (out-of-core processing)", 2
    if isinstance(exc, rasterio.errors.RasterioError | OSError):
        return f"{type(exc).__name__}: {first}", 2
    return (f"unexpected {type(exc).__name__}: {first} — a defect of metalsm; rerun with "
            "--debug for the traceback and report it"), 1


def _guarded(config_path: Path, quiet: bool, work, *, staged: bool = False,
             adds_to: Path | None = None):
    """Load ``config_path`` and call ``work(config)``; any error -> one red line (exit 2 for
    bad input), Ctrl-C -> exit 130; ``--debug`` shows tracebacks. ``staged``: the command
    replaces its run folder only when complete (and checks its inputs itself), so an
    interruption changed nothing; ``adds_to``: the folder a step-by-step command writes
    into, checked with the inputs before any work."""
    from metalsm.config import load_config
    from metalsm.pipeline import check_run

    _setup_logging(quiet)
    try:
        config = load_config(config_path)
        if adds_to is not None:
            check_run(config, adds_to, replaces_out=False)
        return work(config)
    except KeyboardInterrupt:
        console.print("interrupted; " + ("no outputs were changed" if staged
                                         else "outputs written so far may be incomplete"))
        raise typer.Exit(code=130) from None
    except Exception as exc:
        if _show_tracebacks["debug"]:
            raise
        message, code = describe_error(exc)
        raise _fail(message, code) from None


def _run(config_path: Path, out: Path, quiet: bool, chunk_size: int | None = None,
         scheduler: str | None = None) -> None:
    from metalsm.pipeline import run_pipeline

    result = _guarded(config_path, quiet,
                      lambda config: run_pipeline(config, out, show_progress=not quiet,
                                                  chunk_size=chunk_size, scheduler=scheduler),
                      staged=True)
    console.print(f"[green]done[/] in {result.seconds:.0f} s — outputs in [bold]{out}[/]")
    for name, value in result.headline.items():
        console.print(f"  {name}: {value}")
    console.print(f"  report: {out / 'report.html'}")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the commented template.")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented study-area configuration template."""
    if path.exists() and not force:
        raise _fail(f"{path} exists; use --force to overwrite")
    template = resources.files("metalsm") / "templates" / "study_area.toml"
    try:
        with resources.as_file(template) as source:
            shutil.copyfile(source, path)
    except OSError as exc:
        raise _fail(describe_error(exc)[0]) from None
    console.print(f"wrote {path}; edit the paths, then: metalsm run {path} --out RUN_DIR")


ChunkSize = Annotated[int | None, typer.Option(
    "--chunk-size", min=16,
    help="Force chunked (out-of-core) processing in N x N-cell windows.")]
Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="Dask scheduler address (tcp://host:8786) of a running cluster, "
    "or 'threads'.")]


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    quiet: Quiet = False,
    chunk_size: ChunkSize = None,
    scheduler: Scheduler = None,
) -> None:
    """Run the full pipeline: factor stack, samples, models, validation, map, report."""
    _run(config, out, quiet, chunk_size, scheduler)


@app.command()
def demo(out: OutDir = Path("outputs/kaghan"), quiet: Quiet = False) -> None:
    """Run the bundled Kaghan example (examples/kaghan.toml) on the shared data."""
    from metalsm.datasets import EXAMPLES_DIR

    _run(EXAMPLES_DIR / "kaghan.toml", out, quiet)


@app.command()
def factors(
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    quiet: Quiet = False,
    chunk_size: ChunkSize = None,
    scheduler: Scheduler = None,
) -> None:
    """Frequency ratio tables, MIC, collinearity and the factor selection."""
    from metalsm.pipeline import run_factor_analysis

    analysis, paths = _guarded(config, quiet, lambda cfg: run_factor_analysis(
        cfg, out, chunk_size=chunk_size, scheduler=scheduler), staged=True)
    console.print(f"[green]done[/] — outputs in [bold]{out}[/]")
    console.print(f"  selected factors: {', '.join(analysis.selected)}")
    for path in paths.values():
        console.print(f"  {path}")


@app.command()
def credibility(
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    quiet: Quiet = False,
    chunk_size: ChunkSize = None,
    scheduler: Scheduler = None,
) -> None:
    """Credibility of every cell as a non-landslide sample (credibility.tif, credibility.png)."""
    from metalsm.pipeline import run_credibility

    paths, seconds = _guarded(config, quiet, lambda cfg: run_credibility(
        cfg, out, chunk_size=chunk_size, scheduler=scheduler), staged=True)
    console.print(f"[green]done[/] — credibility map in {seconds:.1f} s, outputs in [bold]{out}[/]")
    for path in paths.values():
        console.print(f"  {path}")


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(
        help="overall, kshot, cross-area, ablation, validation, credibility, embeddings, "
        "maps or all.")],
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", "-r", help="Repetitions (seeds, support draws); default "
        "[experiments] repeats.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="'small': few blocks, iterations and repeats (quick look, tests).")] = None,
    meta_iterations: Annotated[int | None, typer.Option(
        "--meta-iterations", min=1, help="Meta-training iterations; default [experiments] "
        "meta_iterations.")] = None,
    quiet: Quiet = False,
    chunk_size: ChunkSize = None,
    scheduler: Scheduler = None,
) -> None:
    """Run a named experiment into OUT/NAME/ (all: every one into OUT/NAME/, plus
    OUT/report.html and OUT/manifest.json)."""
    from metalsm.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise _fail(f"unknown experiment '{name}'; available: {', '.join(EXPERIMENTS)}")
    target = out if name == "all" else out / name
    kwargs = {"repeats": repeats, "preset": preset}  # the registry drops what one ignores
    if name == "credibility" and (repeats is not None or preset is not None):
        raise _fail("the credibility experiment takes its settings from [credibility]; "
                    "--repeats and --preset do not apply")
    if meta_iterations is not None and preset is not None:
        raise _fail("--preset sets its own meta-iterations; drop --meta-iterations or --preset")

    def run_experiment(cfg):
        if meta_iterations is not None:  # recorded in the manifest's config like any setting
            cfg = replace(cfg, experiments=replace(cfg.experiments,
                                                   meta_iterations=meta_iterations))
        if chunk_size is not None or scheduler is not None:  # the stack as `run` holds it
            cfg = replace(cfg, compute=replace(cfg.compute,
                                               chunk_size=chunk_size or cfg.compute.chunk_size,
                                               scheduler=scheduler or cfg.compute.scheduler))
        return EXPERIMENTS[name](cfg, target, **kwargs)

    result = _guarded(config, quiet, run_experiment, adds_to=target)
    console.print(f"[green]done[/] in {result.seconds:.0f} s — outputs in [bold]{target}[/]")
    for path in result.paths.values():
        console.print(f"  {path}")


@app.command()
def segment(
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    blocks: Annotated[
        int | None, typer.Option("--blocks", "-k", help="Number of blocks K (default: config).")
    ] = None,
    compactness: Annotated[
        float | None, typer.Option("--compactness", "-m", help="Compactness M (default: config).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="SLIC iterations (default 5).")] = None,
    quiet: Quiet = False,
    chunk_size: ChunkSize = None,
    scheduler: Scheduler = None,
) -> None:
    """Segment the study area into blocks (weighted SLIC); write blocks, tasks and a map."""
    from metalsm.pipeline import block_statistics, segment_study_area, with_blocks

    stage = _guarded(config, quiet, lambda cfg: segment_study_area(
        with_blocks(cfg, blocks, compactness, iterations), out, show_progress=not quiet,
        chunk_size=chunk_size, scheduler=scheduler), adds_to=out)
    stats = block_statistics(stage.tasks)
    console.print(
        f"[green]done[/]: {stats['blocks']} blocks, samples per block "
        f"{stats['samples_min']}/{stats['samples_median']:g}/{stats['samples_max']} "
        f"(min/median/max), {stats['single_class_share']:.0%} single-class, "
        f"{stats['empty_blocks']} empty — outputs in [bold]{out}[/]"
    )


# --------------------------------------------------------------------------- meta-learning steps
# `metalsm run` with model.map_model = "meta-blockwise" does all of these in one go; the
# steps below save/load their state in OUT/models so one stage can be re-run alone.

Config = Annotated[Path, typer.Argument(help="Study-area TOML configuration with [meta].")]


@app.command()
def pretrain(config: Config, out: OutDir, quiet: Quiet = False) -> None:
    """Blocks, then RBM/RBM/DAE pretraining: OUT/models/pretrained.pt."""
    from metalsm.pipeline import pretrain_step

    result = _guarded(config, quiet, lambda cfg: pretrain_step(cfg, out,
                                                               show_progress=not quiet),
                      adds_to=out)
    console.print(f"[green]done[/]: pretraining in {result['seconds']:.1f} s — "
                  f"[bold]{result['path']}[/]")
    for layer, (before, after) in result["errors"].items():
        console.print(f"  {layer} reconstruction error {before:.4f} → {after:.4f}")


@app.command()
def metatrain(config: Config, out: OutDir, quiet: Quiet = False) -> None:
    """Meta-train the intermediate model (starts from OUT/models/pretrained.pt if present)."""
    from metalsm.pipeline import metatrain_step

    result = _guarded(config, quiet, lambda cfg: metatrain_step(cfg, out,
                                                                show_progress=not quiet),
                      adds_to=out)
    source = "saved pretraining" if result["used_saved_pretraining"] else "fresh start"
    console.print(f"[green]done[/]: meta-training in {result['seconds']:.1f} s ({source}) — "
                  f"[bold]{result['path']}[/]")


@app.command()
def adapt(
    config: Config,
    out: OutDir,
    k: Annotated[str | None, typer.Option("--k", help="Shots per block: N, half or all "
                                          "(default: meta.map_k).")] = None,
    quiet: Quiet = False,
) -> None:
    """Adapt every block from OUT/models/intermediate.pt; write block models and the map."""
    from metalsm.pipeline import adapt_step

    result = _guarded(config, quiet, lambda cfg: adapt_step(cfg, out, k,
                                                            show_progress=not quiet),
                      adds_to=out)
    rules = ", ".join(f"{n} {rule}" for rule, n in result["rules"].items())
    console.print(f"[green]done[/]: blocks {rules} — outputs in [bold]{out}[/]")
    for path in result["paths"].values():
        console.print(f"  {path}")
