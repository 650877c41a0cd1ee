"""A spike raster: when each source fired, coloured by sign, for looking at a capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.atomic_file import write_figure
from testbed.errors import CaptureError
from testbed.plan.wire import KIND_PRIMER, KIND_SPIKE

SIGN_COLOURS = {0: ("tab:blue", "t⁺"), 1: ("tab:red", "t⁻")}


def draw_raster(arrivals: np.ndarray, path: Path | str, title: str | None = None) -> None:
    """PNG of arrivals (`ARRIVAL_DTYPE`): time (ms after the first frame) against (layer, source).

    Spikes are dots coloured by sign; primers, if any, are small grey crosses. Rows are
    labelled ``L<layer>:<source>`` so several layers share one figure.
    """
    if len(arrivals) == 0:
        raise CaptureError(f"raster {path}: no spikes to draw")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on these machines
    import matplotlib.pyplot as plt

    t_ms = (arrivals["t_ns"] - arrivals["t_ns"].min()) / 1e6
    rows, row_of = np.unique(np.stack([arrivals["layer"], arrivals["source"]], axis=1), axis=0, return_inverse=True)
    row_of = row_of.ravel()
    fig, ax = plt.subplots(figsize=(9, max(2.5, min(12, 0.25 * len(rows) + 1.5))), layout="constrained")
    for sign, (colour, label) in SIGN_COLOURS.items():
        pick = (arrivals["kind"] == KIND_SPIKE) & (arrivals["sign"] == sign)
        if pick.any():
            ax.scatter(t_ms[pick], row_of[pick], s=14, c=colour, label=f"{label} spike", zorder=3)
    primers = arrivals["kind"] == KIND_PRIMER
    if primers.any():
        ax.scatter(t_ms[primers], row_of[primers], s=10, c="0.6", marker="x", label="primer", zorder=2)
    if len(rows) <= 40:
        ax.set_yticks(range(len(rows)), [f"L{layer}:{source}" for layer, source in rows.tolist()])
    ax.set_xlabel("time after first frame (ms, kernel timestamps)")
    ax.set_ylabel("layer:source")
    ax.set_title(title if title is not None else f"{len(arrivals)} frames, {len(np.unique(arrivals['sample']))} sample(s)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    write_figure(fig, path, 120)
    plt.close(fig)
