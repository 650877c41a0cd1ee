"""Rendering shared by every command: JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np
from rich import box
from rich.table import Table


def _plain(obj: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def emit_json(obj: Any) -> None:
    """Print `obj` as indented JSON on stdout (the ``--json`` form of every command)."""
    click.echo(json.dumps(obj, indent=2, default=_plain))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")


def per_layer_table(layers: int, title: str | None = None) -> Table:
    """A table with one row per quantity and one right-aligned column per layer: networks have few
    layers and many quantities, so this stays within 80 columns where a column per quantity does not."""
    table = Table("", box=box.SIMPLE_HEAD, padding=(0, 1), title=title, title_justify="left")
    for li in range(layers):
        table.add_column(f"layer {li}", justify="right")
    return table
