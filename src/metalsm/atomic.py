"""Write outputs under a temporary name and rename them when complete.

A crash mid-write then leaves a ``.partial`` file, never a map that looks whole.
A whole run directory is staged the same way (:func:`staged_directory`), so a
directory never mixes the outputs of two runs.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_MARKER",
    "atomic_path",
    "staged_directory",
    "write_csv",
    "write_json",
    "write_text",
]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


#: Written into every staged directory: marks a folder as a finished metalsm run that a
#: rerun may replace.
RUN_MARKER = ".metalsm-run"


@contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; swap it in as ``path`` when the block
    succeeds (the previous folder, if any, is removed only then).

    On any failure, Ctrl-C included, the staging folder is removed and ``path`` is left
    exactly as it was. A killed process leaves only ``.NAME.staging-PID`` beside it,
    which the next run removes. Ctrl-C is also remembered: a KeyboardInterrupt that a
    C library's callback swallowed still stops the swap.
    """
    final = Path(path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(final)
    stage = final.with_name(f".{final.name}.staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    interrupted: list[int] = []
    try:
        with _remembering_interrupts(interrupted):
            yield stage
        if interrupted:
            raise KeyboardInterrupt
        write_json(stage / RUN_MARKER, {"status": "complete"})
        _swap_in(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _remembering_interrupts(interrupted: list[int]) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt as usual and is also noted in ``interrupted``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _swap_in(stage: Path, final: Path) -> None:
    """Two renames: the old run aside, the new one in; then the old one is deleted."""
    previous = final.with_name(f".{final.name}.previous-{os.getpid()}")
    if final.exists():
        os.replace(final, previous)
    os.replace(stage, final)
    shutil.rmtree(previous, ignore_errors=True)


def _clean_stale(final: Path) -> None:
    """Remove staging folders of dead runs; a run killed between the two renames of
    :func:`_swap_in` gets its previous folder back."""
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if kind.endswith(".previous") and not final.exists():
            os.replace(leftover, final)
        elif kind.endswith((".staging", ".previous")):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, frame: Any, index: bool = False) -> Path:
    """A pandas DataFrame as CSV."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
