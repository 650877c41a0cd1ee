"""N cluster hosts on this machine: network namespaces, each running its own sshd.

For tests and trials of a fabric spread over hosts without the hosts. Host 0 is this machine
(``localhost``, where the orchestrator and the relay run); hosts 1..N−1 are namespaces
``p2<run>e<i>``, each linked to one bridge of the run in the root namespace:

    root namespace:  bridge p2<run>cb  198.19.0.1/24   (the "interconnect", MTU 9000)
                       │ veth p2<run>c<i> ─ p2<run>u<i> (inside p2<run>e<i>)
    host e<i>:       198.19.0.<i+1>/24, sshd (Debian openssh-server's /usr/sbin/sshd) on port 22

The addresses are RFC 2544's benchmarking range (198.18.0.0/15; spikes use 198.18.<layer>.x,
testbed.infer.session) and never leave the run's objects: the bridge has no other port and no
route points beyond it. Each run makes its own keys in its run directory (RunRegistry.run_dir,
``/run/pi2/<run>.d``, removed with the registry): one client key (authorized for root on every
emulated host), one host key, a known_hosts pinning it, and an ssh_config every ssh of the run
uses (``ssh -F``), so nothing in ~/.ssh or /etc/ssh is read or written. An emulated host shares
this machine's kernel, file system and process table; only its network is its own, which is
what Mininet's cluster edition needs: a "remote" node there is a shell ssh starts in that
namespace, and its "root namespace" is the emulated host's.

Every object is recorded in the run's registry (names p2<run>…), the sshd pids after their
processes start, so `pi2 down RUN` / `pi2 clean` remove them (newest first: sshd, then its
namespace, then the veths and the bridge), also after a SIGKILL of the orchestrator. Each sshd
runs in a PID namespace of its own (so an emulated host is like a real one: its processes are not
this machine's to name, and they all die with it); /proc stays this machine's, so tools that look
up a pid under /proc (mnexec -a) cannot be used inside one.

The jumbo MTU is deliberate: the fabric's primers are full 1514-byte frames, and a VXLAN tunnel
(testbed.cluster.tunnels) adds 50 bytes, so the underlay must carry ≥ 1550-byte packets.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from testbed.cluster.hosts import LOCALHOST, ClusterError, ClusterHost, ClusterHosts, emulated_name
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry, object_name

SUBNET = "198.19.0"  # /24; .1 is the root namespace's end (localhost), .i+1 is host e<i>
PREFIXLEN = 24
UNDERLAY_MTU = 9000
SSHD = "/usr/sbin/sshd"  # sshd refuses to run unless started by its absolute path (it re-executes itself)
SSH_PORT = 22
READY_TIMEOUT_S = 10.0
PRIVSEP_DIR = Path("/run/sshd")  # the Debian package's privilege-separation directory (its tmpfiles.d makes it)


def underlay_links(run_id: str, host: ClusterHost) -> tuple[str, str]:
    """(root-namespace end, host end) of an emulated host's veth to the interconnect bridge."""
    index = host.name[1:]
    return object_name(run_id, f"c{index}"), object_name(run_id, f"u{index}")


def address(index: int) -> str:
    return f"{SUBNET}.{index + 1}"


def _keygen(path: Path) -> str:
    """A fresh ed25519 key pair at `path` (no passphrase); returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pi2-emulated-cluster", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _sshd_config(run_dir: Path, listen: str) -> str:
    # UsePAM no and no password logins: only the run's key opens a session (as root: mnexec and
    # the kernel objects need it). PidFile none: the registry records the pid.
    return "\n".join([
        f"ListenAddress {listen}", f"Port {SSH_PORT}", f"HostKey {run_dir / 'host_key'}",
        f"AuthorizedKeysFile {run_dir / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "UseDNS no",
        "PidFile none", "PrintMotd no", "ClientAliveInterval 2", "ClientAliveCountMax 2", "AcceptEnv PI2_*", "LogLevel ERROR", ""])


def _ssh_config(run_dir: Path) -> str:
    # No ControlMaster: a shared master would be a daemon no registry records, and once the
    # emulated host's veth is gone it would wait on a dead TCP peer; every ssh is a child of the
    # process that runs it. ServerAlive: a client whose host vanished gives up within seconds.
    return "\n".join([
        f"Host {SUBNET}.*", "  User root", f"  IdentityFile {run_dir / 'client_key'}", "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {run_dir / 'known_hosts'}", "  StrictHostKeyChecking yes", "  BatchMode yes",
        "  LogLevel ERROR", "  ControlMaster no", "  ServerAliveInterval 1", "  ServerAliveCountMax 3",
        "  SetEnv PI2_EMULATED=1", ""])


def _check_free(lb: LinkBuilder) -> None:
    taken = [a.get_attr("IFA_ADDRESS") for a in lb.ipr(None).get_addr(family=socket.AF_INET)]
    clash = [a for a in taken if a and a.startswith(SUBNET + ".")]
    if clash:
        raise ClusterError(f"emulated hosts: {SUBNET}.0/{PREFIXLEN} is in use on this machine ({clash[0]}); "
                           f"another run's emulated cluster is up: `sudo pi2 down` it (pi2 status lists runs)")


def _wait_ready(host: ClusterHost, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once `host`'s sshd accepts TCP connections (polling a connect, not a data path)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ClusterError(f"emulated host {host.name}: sshd exited ({proc.returncode}): "
                               f"{log.read_text().strip()[-200:] or 'no message'}")
        try:
            socket.create_connection((host.address, SSH_PORT), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ClusterError(f"emulated host {host.name}: sshd not reachable at {host.address}:{SSH_PORT} "
                                   f"after {READY_TIMEOUT_S:g} s") from None
            time.sleep(0.05)


def emulate_hosts(registry: RunRegistry, count: int) -> ClusterHosts:
    """Make `count` hosts for `registry`'s run (module docstring): localhost and count − 1 emulated
    ones, each with a running sshd. Everything is recorded before (pids: as) it exists."""
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        raise ClusterError("emulated hosts need the ssh client: apt-get install openssh-client (./install.sh)")
    if not Path(SSHD).is_file():
        raise ClusterError(f"emulated hosts run {SSHD}, which is missing: apt-get install openssh-server "
                           f"(./install.sh --dev installs it)")
    run_dir = registry.run_dir
    client_pub = _keygen(run_dir / "client_key")
    host_pub = _keygen(run_dir / "host_key")
    _write(run_dir / "authorized_keys", client_pub + "\n")
    hosts = [ClusterHost(LOCALHOST, address(0))]
    with LinkBuilder(registry) as lb:
        if count > 1:
            _check_free(lb)
            bridge = lb.bridge("cb")
            lb.ipr(None).link("set", index=lb.index(bridge, None), mtu=UNDERLAY_MTU)
            lb.address(bridge, address(0), PREFIXLEN)
            lb.up(bridge)
        for i in range(1, count):
            ns = lb.namespace(emulated_name(i))
            outer, inner = lb.veth(f"c{i}", f"u{i}", None, ns)  # underlay_links
            lb.enslave(outer, bridge)
            for name, where in ((outer, None), (inner, ns)):
                lb.ipr(where).link("set", index=lb.index(name, where), mtu=UNDERLAY_MTU)
                lb.up(name, where)
            lb.address(inner, address(i), PREFIXLEN, ns)
            hosts.append(ClusterHost(emulated_name(i), address(i), ns))
    _write(run_dir / "known_hosts", "".join(f"{h.address} {host_pub}\n" for h in hosts[1:]))
    config = _write(run_dir / "ssh_config", _ssh_config(run_dir))
    if len(hosts) > 1 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755)  # the package's own directory, shared; left in place
    for host in hosts[1:]:
        sshd_conf = _write(run_dir / f"sshd_{host.name}.conf", _sshd_config(run_dir, host.address))
        log = run_dir / f"sshd_{host.name}.log"
        with log.open("wb") as err:
            # A PID namespace of its own, so the host is one process tree: killing the recorded
            # pid (unshare's) kills its child, sshd, the namespace's init, and the kernel then
            # kills every process left in it: ssh sessions (which setsid away from sshd and would
            # otherwise outlive it, their TCP peer gone with the veths) and the shells Mininet
            # started there. `ip netns exec` execs sshd in place.
            proc = subprocess.Popen(["unshare", "--pid", "--kill-child", "ip", "netns", "exec", host.netns,
                                     SSHD, "-D", "-e", "-f", str(sshd_conf)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        registry.record_pid(proc.pid)
        _wait_ready(host, proc, log)
    return ClusterHosts(tuple(hosts), config, UNDERLAY_MTU)
