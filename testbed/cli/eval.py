"""`pi2 eval`: accuracy of a network file on a data set, with the numpy model (no torch)."""

from __future__ import annotations

from pathlib import Path

import click

from testbed.cli.output import emit_json, json_option
from testbed.cli.params import FiniteRange
from testbed.model.netfile import load_network
from testbed.train.datasets import LOADERS
from testbed.train.evaluate import EvalConfig, evaluate_network


@click.command(name="eval")
@click.argument("network", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(sorted(LOADERS)), default=None,
              help="Data set; default: the one the network was trained on (its provenance).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--bits", type=click.IntRange(0, 16), default=None,
              help="Override delay quantisation: 1..16 bits, or 0 for float delays. Default: the network's own.")
@click.option("--jitter", type=FiniteRange(min=0), default=0.0, show_default=True,
              help="Gaussian jitter σ (model time units) added to every layer's output times.")
@click.option("--event-loss", type=FiniteRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of every layer's input events lost at random: a lost event reaches no neuron "
                   "(0.1 keeps 90 %). pi2 compile/infer --loss instead drops each port's copy independently.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the jitter/loss noise.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding the CIFAR-10/100 python or binary batches (cifar10, cifar100 only).")
@json_option
def eval_command(network: Path, dataset: str | None, split: str, bits: int | None, jitter: float, event_loss: float,
                 limit: int | None, seed: int, data_dir: Path | None, as_json: bool) -> None:
    """Accuracy of the π² NETWORK file on a data set split, using its stored input normalisation.

    \b
    Example:
      pi2 eval testbed/networks/digits-mlp.npz --dataset digits --bits 3 --jitter 0.1
      pi2 eval resnet9.npz --dataset cifar10 --data-dir ~/data --limit 100
    """
    result = evaluate_network(load_network(network), EvalConfig(dataset, split, bits, jitter, event_loss, limit, seed,
                                                                data_dir))
    result["network"] = str(network)
    if as_json:
        emit_json(result)
        return
    bits_text = "float delays" if result["bits"] is None else f"{result['bits']}-bit delays"
    click.echo(f"{network}: {result['accuracy']:.2f} % on {result['dataset']} {result['split']} "
               f"({result['samples']} samples, K={result['k']}, {bits_text}, jitter σ={jitter}, event loss {event_loss})")
