"""Fit the lowering's per-architecture efficiency parameters to public measurements."""

from __future__ import annotations

from collections.abc import Sequence

from calibrate.public import Dataset


def logo_predictions(datasets: Sequence[Dataset]) -> dict[str, list[float]]:
    """Per dataset name, each row's predicted microseconds from a fit that held out the
    row's group (DeepBench app, or network). Empty where nothing was fitted."""
    return {}
