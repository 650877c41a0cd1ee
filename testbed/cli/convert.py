"""`pi2 import` and `pi2 export`: PyTorch checkpoints and NIR graphs to π² network files and back."""

from __future__ import annotations

from pathlib import Path

import click

from testbed.cli.output import emit_json, json_option
from testbed.model.formats import EXPORT_FORMATS, export_network, import_network
from testbed.model.torch_import import ARCHS, ORIENTATIONS, SCALES
from testbed.train.datasets import NORMALISATIONS


def _k_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,30") from None


@click.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--k", "k", callback=_k_list, metavar="K1,K2,…",
              help="K per layer (mean of the K earliest of 2n arrivals), e.g. 1,30. Required for .pt; "
                   "for .nir only when the graph has no π² metadata.")
@click.option("--arch", type=click.Choice(ARCHS), default=None,
              help="Checkpoint architecture. Default: resnet9 if it has BatchNorms (or more than two convolutions), "
                   "lenet5 if it has convolutions, else mlp.")
@click.option("--orientation", type=click.Choice(ORIENTATIONS), default="auto", show_default=True,
              help="Dense weights as teacher (nn.Linear, out×in) or π² student (in×out); auto infers it "
                   "from the chain of shapes and asks when both fit.")
@click.option("--constants", type=click.Choice(SCALES), default="auto", show_default=True,
              help="Per-layer constants: uniform (one s = 10, linear scores: pi2-model.md) or the authors' (LeNet5_K: "
                   "s 1 after conv1 and 10 after the rest, rectified scores; ResNet-9: BatchNorm of −1·y, scores −10·y). "
                   "auto: the authors' for their π² layouts (.cnn.weight keys) and for resnet9.")
@click.option("--dataset", default=None, metavar="NAME",
              help="Data set the network was trained on (digits, mnist, fashion, mnist1d, cifar10, cifar100): the "
                   "file records it with its default input normalisation x = raw·scale + offset (CIFAR: per channel, "
                   "the authors' statistics), which the network must have been trained with.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Network file to write (.npz).")
@json_option
def import_cmd(source: Path, k: list[int] | None, arch: str | None, orientation: str, constants: str,
               dataset: str | None, out: Path, as_json: bool) -> None:
    """Import SOURCE (a torch state_dict .pt/.pth, or a NIR graph .nir) as a π² network file.

    \b
    The .pt is read without torch. π² layers have no biases: non-zero biases are refused.
    Examples:
      pi2 import teacher.pt --k 1,30 --dataset mnist -o mnist_k1_30.npz
      pi2 import fmnist_pi2_student.pt --k 12,50,85,25,75 --dataset fashion -o lenet.npz
      pi2 import ResNet9_cifar10_k_new.pt --k 16,50,35,35,60,70,80,200,50 --dataset cifar10 -o resnet9.npz
      pi2 import net.nir -o net.npz
    """
    record = None
    if dataset is not None:
        if dataset not in NORMALISATIONS:
            raise click.BadParameter(f"{dataset!r} is not one of {sorted(NORMALISATIONS)}", param_hint="--dataset")
        record = {"name": dataset, **NORMALISATIONS[dataset].record()}
    net = import_network(source, out, k, arch, orientation, record, constants)
    summary = {"source": str(source), "output": str(out), "input_shape": list(net.input_shape),
               "layers": [type(layer).__name__ for layer in net.layers], "k": list(net.k),
               "classes": net.n_classes, "import": net.provenance.get("import")}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote {out}: {len(net.layers)} layers "
               f"{'×'.join(str(s) for s in net.input_shape)} → {net.n_classes} classes, K={','.join(map(str, net.k))}")
    beyond = (net.provenance.get("import") or {}).get("beyond_c", 0)
    if beyond:
        click.echo(f"note: {beyond} weights lie beyond ±c = {net.constants.c:g}; π² delays clamp them, so this network "
                   "computes differently from a layer that does not", err=True)


@click.command("export")
@click.argument("net_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="nir", show_default=True,
              help="Output format. nir: a NIR graph (HDF5), one Linear + Scale(K in metadata) per layer.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write, e.g. net.nir.")
@json_option
def export_cmd(net_file: Path, fmt: str, out: Path, as_json: bool) -> None:
    """Export the dense π² network NET_FILE (.npz) to another format.

    \b
    Example:
      pi2 export net.npz --format nir -o net.nir
    """
    written = export_network(net_file, fmt, out)
    if as_json:
        emit_json({"network": str(net_file), "format": fmt, "output": str(written)})
    else:
        click.echo(f"wrote {written} ({fmt})")
