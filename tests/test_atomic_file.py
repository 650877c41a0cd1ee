"""Files pi2 writes (often as root, often into shared directories) are whole or absent and never
written through a symlink someone planted at the target name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testbed.atomic_file import check_output_file, check_writable_dir, write_atomic
from testbed.errors import OutputError


def _pcap(path: Path) -> None:
    from testbed.traffic.pcap import write_pcap

    write_pcap(path, [1], [bytes(60)])


def _network(path: Path) -> None:
    from testbed.model.netfile import save_network
    from testbed.model.network import DenseLayer, Pi2Network

    save_network(Pi2Network((DenseLayer(np.eye(2), 1),), (2,)), path)


def _figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from testbed.atomic_file import write_figure

    fig = plt.figure()
    write_figure(fig, path, 50)
    plt.close(fig)


WRITERS = {"bytes": lambda p: write_atomic(p, b"new"), "pcap": _pcap, "network": _network, "figure": _figure}


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS.keys())
def test_a_planted_symlink_is_replaced_not_followed(tmp_path, write) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.png"
    target.symlink_to(victim)
    write(target)
    assert victim.read_text() == "keep" and not target.is_symlink() and target.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "victim"]  # no temporary left


def test_a_write_interrupted_before_its_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    import testbed.atomic_file as atomic_file

    target = tmp_path / "plan.json"
    target.write_text("old")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_file.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_outputs_are_checked_before_the_work(tmp_path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "x.json", "-o")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path, "-o")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable_dir(Path("/dev/null/x"), "--plots")
    assert check_writable_dir(tmp_path / "new" / "dir", "--pcap") == tmp_path / "new" / "dir"
