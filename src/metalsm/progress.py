"""Progress reporting: one rich display per run, silent when not on a terminal or in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = [
    "RunProgress",
]


class RunProgress:
    """Stage spinners and counted bars on a rich console."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    @contextmanager
    def stage(
        self, description: str, total: int | None = 1
    ) -> Iterator[Callable[..., None]]:
        """A task for one stage; yields ``advance(n=1, description=None)``."""
        task = self._progress.add_task(description, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            if note:
                self._progress.update(task, description=f"{description}: {note}")
            self._progress.advance(task, n)

        try:
            yield advance
        finally:
            self._progress.update(task, completed=total or 1, total=total or 1,
                                  description=description)
