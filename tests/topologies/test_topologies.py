"""topologies/*.py: Mininet topologies loadable the way `mn --custom FILE --topo NAME,ARGS` loads them.

Structure is checked without root. Under root each is also started: in-process with Mininet's API
(net.stop() after), and through `mn`'s own MininetRunner run by the system Python, exactly as
`mn --custom … --topo … --switch lxbr --controller none --test none` does, but without the
`__main__` block, whose exception handler runs `mn -c` (killall, every *-ethN link): a failure
here must not touch anything that is not ours. Every node is named p2<run>… and the run's
cleanup removes whatever a failure leaves.
"""

from __future__ import annotations

import importlib.util
import runpy
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from testbed.kernel import cleanup, netns
from testbed.kernel.names import RunRegistry

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
MN = "/usr/bin/mn"
SYSTEM_PYTHON = "/usr/bin/python3"
# mn's MininetRunner, minus `if __name__ == "__main__"` (which would run mininet.clean on any error).
MN_WITHOUT_CLEANUP = ("import runpy, sys; sys.argv = ['mn'] + sys.argv[1:]; "
                      f"runpy.run_path({MN!r}, run_name='pi2_mn')['MininetRunner']()")

needs_mininet = pytest.mark.skipif(importlib.util.find_spec("mininet") is None,
                                   reason="needs Mininet's Python API: pip install -e '.[mininet]'")


def test_the_repository_topology_is_the_packaged_one() -> None:
    """One copy: `mn --custom topologies/pi2_layers.py` runs the module the Mininet backend imports,
    which ships inside the package (an installed testbed has no checkout)."""
    assert (TOPOLOGIES / "pi2_layers.py").resolve() == Path(importlib.util.find_spec("testbed.fabric.pi2_layers").origin)


def topos(name: str) -> dict:
    """What `mn --custom` reads from a file: its module-level `topos` dict."""
    return runpy.run_path(str(TOPOLOGIES / name))["topos"]


@needs_mininet
def test_pi2_layers_wires_one_switch_per_layer_to_one_relay():
    topo = topos("pi2_layers.py")["pi2layers"](8, 4, 2)
    assert topo.hosts() == ["h"] and topo.switches() == ["sw0", "sw1"]
    per_switch = {s: sum(1 for a, b in topo.links() if s in (a, b)) for s in topo.switches()}
    assert per_switch == {"sw0": 1 + 2 * 4, "sw1": 1 + 2 * 2}  # injector link + one per neuron port


@needs_mininet
def test_pi2_layers_takes_explicit_names_from_the_testbed():
    layers = [{"switch": "p2abcdsw0", "dpid": "1".zfill(16),
               "links": [("p2abcdin0", "p2abcdsw0i"), ("p2abcdl0n0p", "p2abcdsw0n0p")]}]
    topo = topos("pi2_layers.py")["pi2layers"](layers=layers, relay="p2abcdh", host_params={"ip": None})
    infos = [info for _, _, info in topo.links(withInfo=True)]
    assert [(i["intfName1"], i["intfName2"]) for i in infos] == layers[0]["links"]
    assert topo.nodeInfo("p2abcdh") == {"ip": None}


@needs_mininet
def test_pi2_layers_rejects_bad_sizes_with_one_line():
    with pytest.raises(ValueError, match="pi2layers"):
        topos("pi2_layers.py")["pi2layers"](8)
    with pytest.raises(ValueError, match="at most"):
        topos("pi2_layers.py")["pi2layers"](8, 64)


@needs_mininet
def test_leaf_spine_links_every_leaf_to_every_spine():
    topo = topos("leaf_spine.py")["leafspine"](2, 3, 2)
    spines = [s for s in topo.switches() if s.startswith("sp")]
    leaves = [s for s in topo.switches() if s.startswith("lf")]
    assert len(spines) == 2 and len(leaves) == 3 and len(topo.hosts()) == 6
    for leaf in leaves:
        assert {b if a == leaf else a for a, b in topo.links() if leaf in (a, b)} >= set(spines)
    assert len(topo.links()) == 2 * 3 + 6


@pytest.fixture
def run_prefix():
    reg = RunRegistry.create()
    try:
        yield f"p2{reg.run_id}"
    finally:
        cleanup.down(reg.run_id)  # Mininet made these objects itself, unrecorded: sweep exactly the run's
        cleanup.sweep(cleanup.unrecorded(frozenset({reg.run_id})))
        assert not [n for _, n in socket.if_nameindex() if n.startswith(f"p2{reg.run_id}")]


def udp_reaches(src_ns: str, dst_ns: str, dst_ip: str, port: int = 5402) -> bool:
    """One UDP datagram from namespace `src_ns` to `dst_ip` in `dst_ns` (ARP resolved by the kernel).
    Used instead of ping, which this machine lacks."""
    with netns.socket_in(dst_ns, socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            netns.socket_in(src_ns, socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind((dst_ip, port))
        rx.settimeout(3.0)
        tx.sendto(b"p2", (dst_ip, port))
        try:
            return rx.recv(16) == b"p2"
        except socket.timeout:
            return False


@pytest.mark.root
@needs_mininet
def test_leaf_spine_carries_traffic_through_linux_bridges(run_prefix):
    from mininet.net import Mininet
    from mininet.nodelib import LinuxBridge

    topo = topos("leaf_spine.py")["leafspine"](1, 2, 1, prefix=run_prefix)
    net = Mininet(topo=topo, switch=LinuxBridge, controller=None)
    try:
        net.start()
        a, b = net.hosts
        assert udp_reaches(f"/proc/{a.pid}/ns/net", f"/proc/{b.pid}/ns/net", b.IP())
    finally:
        net.stop()
    assert not [n for _, n in socket.if_nameindex() if n.startswith(run_prefix)]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("mnexec") is None or not Path(MN).exists(), reason="needs Debian's mininet (mn, mnexec)")
@pytest.mark.parametrize("custom,topo", [("pi2_layers.py", "pi2layers,4,2,1"), ("leaf_spine.py", "leafspine,1,2,1")])
def test_mn_custom_builds_starts_and_stops(run_prefix, custom, topo):
    # --test none: build, start, stop (this machine has no ping for --test pingall).
    done = subprocess.run([SYSTEM_PYTHON, "-c", MN_WITHOUT_CLEANUP, "--custom", str(TOPOLOGIES / custom),
                           "--topo", f"{topo},prefix={run_prefix}", "--switch", "lxbr", "--controller", "none",
                           "--test", "none"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completed in" in done.stdout + done.stderr
    assert f"{run_prefix}sw0" in done.stdout + done.stderr or f"{run_prefix}lf0" in done.stdout + done.stderr
