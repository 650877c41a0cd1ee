"""Foreign files to π² network files and back: what `pi2 import` and `pi2 export` do.

The source format is told by the file name: ``.pt``/``.pth`` is a PyTorch state_dict
(`torch_checkpoint`, `torch_import`), ``.nir`` a NIR graph (`nir_io`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from testbed.errors import ImportFormatError
from testbed.model.netfile import check_dataset_record, load_network, save_network
from testbed.model.network import Pi2Network
from testbed.model.nir_io import export_nir, import_nir
from testbed.model.torch_checkpoint import read_state_dict
from testbed.model.torch_import import network_from_state_dict

TORCH_SUFFIXES = (".pt", ".pth")
NIR_SUFFIXES = (".nir",)
EXPORT_FORMATS = ("nir",)


def import_network(source: str | Path, out: str | Path, k: Sequence[int] | None, arch: str | None = None,
                   orientation: str = "auto", dataset: Mapping[str, object] | None = None,
                   constants: str = "auto") -> Pi2Network:
    """Read `source` (a checkpoint or NIR graph), write it to the network file `out`, return the network.

    `k` (K per layer) is required for checkpoints and for NIR graphs without π² metadata;
    `arch`, `orientation` and `constants` (uniform or the authors', `torch_import.SCALES`) apply
    to checkpoints only; `dataset` ({"name", "scale", "offset"}: the
    data set and input normalisation x = raw·scale + offset the network was trained with) is
    recorded as provenance["dataset"].
    """
    source = Path(source)
    suffix = source.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        if k is None:
            raise ImportFormatError(f"{source}: a checkpoint carries no K; give K per layer, e.g. --k 1,30")
        net = network_from_state_dict(read_state_dict(source), k, arch, orientation, where=str(source),
                                      scales=constants)
    elif suffix in NIR_SUFFIXES:
        if arch is not None or orientation != "auto" or constants != "auto":
            raise ImportFormatError(f"{source}: --arch, --orientation and --constants apply to .pt checkpoints "
                                    "only; a NIR graph states them")
        net = import_nir(source, k)
    else:
        raise ImportFormatError(f"{source}: unknown file type {suffix!r}; expected "
                                f"{' or '.join(TORCH_SUFFIXES + NIR_SUFFIXES)}")
    if dataset is not None:
        check_dataset_record(dict(dataset), list(net.input_shape), str(out))
        net = replace(net, provenance={**net.provenance, "dataset": dict(dataset)})
    save_network(net, out)
    return net


def export_network(net_file: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the network file `net_file` to `out` in format `fmt` (``nir``); returns the path written."""
    if fmt not in EXPORT_FORMATS:
        raise ImportFormatError(f"export format {fmt!r} is unknown; expected one of {list(EXPORT_FORMATS)}")
    return export_nir(load_network(net_file), out)
