"""Where study-area data live, resolved in one place.

``METALSM_DATA`` wins; otherwise ``../shared/data`` beside the repository
(or beside the current directory, for an installed package run from a checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

from metalsm.errors import MetalsmInputError

__all__ = [
    "EXAMPLES_DIR",
    "data_root",
    "expand_data_path",
    "study_area",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = _REPO_ROOT / "examples"


def data_root(must_exist: bool = True) -> Path:
    """The directory that holds ``kaghan/`` and ``hongkong/``."""
    env = os.environ.get("METALSM_DATA")
    candidates = (
        [Path(env)]
        if env
        else [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    if must_exist:
        looked = ", ".join(str(c) for c in candidates)
        raise MetalsmInputError(
            f"study-area data not found (looked in: {looked}); "
            "set METALSM_DATA to the directory holding kaghan/ and hongkong/"
        )
    return candidates[0]


def study_area(name: str) -> Path:
    """The directory of one study area, e.g. ``study_area("kaghan")``."""
    path = data_root() / name
    if not path.is_dir():
        raise MetalsmInputError(f"study area '{name}' not found: {path} does not exist")
    return path


def expand_data_path(text: str) -> str:
    """Substitute ``${METALSM_DATA}`` in a config path with :func:`data_root`."""
    if "${METALSM_DATA}" in text or "$METALSM_DATA" in text:
        root = str(data_root())
        text = text.replace("${METALSM_DATA}", root).replace("$METALSM_DATA", root)
    return text
