"""The ``metalsm`` command line: parse, call a pipeline function, say where outputs went."""

from __future__ import annotations

import logging
import shutil
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

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


def _run(config_path: Path, out: Path, quiet: bool) -> None:
    from metalsm.config import load_config
    from metalsm.pipeline import run_pipeline

    _setup_logging(quiet)
    try:
        config = load_config(config_path)
        result = run_pipeline(config, out, show_progress=not quiet)
    except MetalsmInputError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
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
        console.print(f"[bold red]error:[/] {path} exists; use --force to overwrite")
        raise typer.Exit(code=2)
    template = resources.files("metalsm") / "templates" / "study_area.toml"
    with resources.as_file(template) as source:
        shutil.copyfile(source, path)
    console.print(f"wrote {path}; edit the paths, then: metalsm run {path} --out RUN_DIR")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Study-area TOML configuration.")],
    out: OutDir,
    quiet: Quiet = False,
) -> None:
    """Run the full pipeline: factor stack, samples, models, validation, map, report."""
    _run(config, out, quiet)


@app.command()
def demo(out: OutDir = Path("outputs/kaghan"), quiet: Quiet = False) -> None:
    """Run the bundled Kaghan example (examples/kaghan.toml) on the shared data."""
    from metalsm.datasets import EXAMPLES_DIR

    _run(EXAMPLES_DIR / "kaghan.toml", out, quiet)
