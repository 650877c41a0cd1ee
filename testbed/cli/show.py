"""`pi2 show`: what a network file holds (topology, K, constants, quantisation, provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.model.netfile import load_network, network_meta
from testbed.model.network import ConvLayer


@click.command()
@click.argument("network", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def show(network: Path, as_json: bool) -> None:
    """Describe the π² NETWORK file: layers, K, constants, quantisation, accuracies, provenance.

    \b
    Example:
      pi2 show testbed/networks/digits-mlp.npz
    """
    net = load_network(network)
    meta = network_meta(net)
    for entry, layer in zip(meta["topology"], net.layers):
        entry["weight_shape"] = list(layer.weight.shape)
        entry["inputs"], entry["neurons"], entry["out_shape"] = layer.n_inputs, layer.n_neurons, list(layer.out_shape)
    if as_json:
        emit_json(meta)
        return
    console = Console()
    table = Table(title=f"{network}: input {tuple(net.input_shape)}")
    for column in ("layer", "type", "weight", "fan-in", "neurons", "K", "s", "then", "output"):
        table.add_column(column)
    for i, (entry, layer, s) in enumerate(zip(meta["topology"], net.layers, net.scales)):
        kind = entry["type"] + (f" stride {layer.stride} pad {layer.padding}" if isinstance(layer, ConvLayer) else "")
        then = [word for word, on in (("affine", layer.affine is not None),
                                      (f"+input of {layer.residual}", layer.residual is not None),
                                      (f"pool {getattr(layer, 'pool', 1)}", getattr(layer, "pool", 1) > 1)) if on]
        table.add_row(str(i), kind, "×".join(map(str, entry["weight_shape"])), str(entry["inputs"]),
                      str(entry["neurons"]), str(entry["k"]), f"{s:g}", ", ".join(then) or "—",
                      str(tuple(entry["out_shape"])))
    console.print(table)
    quant = meta["quantisation"]
    click.echo(f"constants: {meta['constants']}   neuron: {meta['neuron']}   "
               f"delays: {'float' if quant is None else str(quant['bits']) + '-bit'}   "
               f"scores: {meta.get('scores', 'linear')}")
    provenance = meta["provenance"]
    if "accuracy" in provenance:
        click.echo("accuracy (%): " + ", ".join(f"{k} {v}" for k, v in provenance["accuracy"].items()))
    click.echo("provenance: " + json.dumps(provenance, indent=1))
