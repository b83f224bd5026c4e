"""How a command runs: serially, on local threads or on a Dask cluster, in memory
or window by window (one executor, one choice of path and window size)."""

from metalsm.scale._compute import (
    Compute,
    Plan,
    choose_plan,
    compute_context,
    estimated_stack_bytes,
)

__all__ = [
    "Compute",
    "Plan",
    "choose_plan",
    "compute_context",
    "estimated_stack_bytes",
]
