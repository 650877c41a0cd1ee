"""`pi2 trace`: show the spikes of a pcap as a table, JSON, or a raster plot."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from testbed.atomic_file import check_output_file
from testbed.cli.output import emit_json, json_option
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE

KIND_NAMES = {KIND_SPIKE: "spike", KIND_PRIMER: "primer", KIND_EVENT: "event"}


@click.command()
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--raster", "raster", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a raster plot (time vs layer:source, coloured by sign) to this PNG file.")
@json_option
def trace(pcap: Path, raster: Path | None, as_json: bool) -> None:
    """Dissect the spikes captured in PCAP (UDP port 5402; other frames are skipped).

    Times are the pcap's timestamps (the receiver writes kernel RX timestamps, ns); the table shows
    them in ms after the first spike. Classic pcap (ns or µs), link type Ethernet, as written by the
    testbed or by `tcpdump -i <veth> --time-stamp-precision=nano -w FILE`.

    \b
    Examples:
      pi2 trace run.pcap
      pi2 trace run.pcap --raster run.png
      pi2 trace run.pcap --json | jq '.[0]'
    """
    # Imported here: scapy (behind the Spike layer) adds ~0.3 s to every `pi2` start otherwise.
    from testbed.traffic.pcap import read_spikes
    from testbed.traffic.raster import draw_raster

    if raster is not None:
        check_output_file(raster, "--raster")
    spikes = read_spikes(pcap)
    if raster is not None:
        draw_raster(spikes, raster, title=f"{pcap.name}: {len(spikes)} frames")
    first = int(spikes["t_ns"].min()) if len(spikes) else 0
    rows = [{"t_ns": int(s["t_ns"]), "t_ms": (int(s["t_ns"]) - first) / 1e6, "layer": int(s["layer"]),
             "source": int(s["source"]), "sign": "t-" if s["sign"] else "t+", "sample": int(s["sample"]),
             "seq": int(s["seq"]), "kind": KIND_NAMES.get(int(s["kind"]), str(int(s["kind"]))),
             "time_ns": int(s["time_ns"])} for s in spikes]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{pcap.name}: {len(rows)} spike frames", title_justify="left")
    for name in ("t (ms)", "layer", "source", "sign", "sample", "seq", "kind"):
        table.add_column(name, justify="left" if name in ("sign", "kind") else "right")
    for r in rows:
        table.add_row(f"{r['t_ms']:.6f}", str(r["layer"]), str(r["source"]), r["sign"], str(r["sample"]),
                      str(r["seq"]), r["kind"])
    Console().print(table)
    if raster is not None:
        click.echo(f"raster written to {raster}")
