"""`pi2 doctor --cluster`: can each host take a part of a fabric, and what do the links do to τ.

Per host (localhost included): ssh as root works (not for localhost), passwordless sudo (Mininet's
cluster edition runs every remote command through it), Mininet's `mnexec` and bridge-utils'
`brctl`, the testbed at this machine's interpreter path (each part's delay trees are built there:
testbed.cluster.part), the kernel and the tc profile it realises (the host's own `pi2 doctor`;
an emulated host shares this machine's kernel, so this machine's answer is its answer), and the
underlay MTU (tunnels carry 1514-byte primers: ≥ 1550). Per path relay → host: the round-trip
time and its jitter (ping), and the clock offset.

What the timing means for τ. Every timestamp the fabric compares is taken on localhost: the relay
stamps each spike's origin and its gates read the kernel RX stamps of what comes back (testbed.
fabric.cluster_backend), so a clock offset between hosts enters no computed value (the remote
hosts' htb timers measure only intervals, where a rate error of 100 ppm is 1 µs per 10 ms). The
offset is still measured and shown (chrony or linuxptp when the host runs one, else a bracketed
``date`` over ssh) because a layout that gated on the part's own host would compare clocks, and
an offset then corrupts every arrival.
The jitter does enter: each spike crosses the tunnels on its own, so z⁺ and z⁻ of a neuron get
independent errors; with `tau_us` given, a path whose 4-sigma jitter (√2 × for the difference)
exceeds the share of τ the report already calls "off the plan" is refused, naming the fix.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from testbed.cluster.hosts import ClusterHost, ClusterHosts, ssh_command
from testbed.cluster.timing import ping

LATE_FRACTION_OF_TAU = 0.05  # as testbed.infer.report: a median error beyond this share of τ is "off the plan"
MIN_UNDERLAY_MTU = 1550
CLOCK_READINGS = 10
CHRONY_OFFSET_RE = re.compile(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow)", re.M)
PTP_OFFSET_RE = re.compile(r"master_offset\s+(-?[0-9]+)")


@dataclass
class HostCheck:
    host: str
    address: str
    checks: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    rtt_us: float | None = None
    jitter_us: float | None = None
    clock_offset_us: float | None = None
    clock_uncertainty_us: float | None = None
    clock_source: str | None = None
    profile: str | None = None

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _run(hosts: ClusterHosts, host: ClusterHost, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # ssh joins its arguments into one line for the remote shell: quote them into one
    command = list(argv) if host.is_local else ssh_command(hosts, host, shlex.join(argv))
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"timed out after {timeout:g} s")


def _clock(hosts: ClusterHosts, host: ClusterHost, found: HostCheck) -> None:
    """The host's clock offset from localhost's: the host's own chrony/linuxptp estimate of its
    offset from its reference when it runs one (then the two hosts agree as well as their
    references do), and a direct reading: localhost's time before and after the host's ``date``."""
    if host.is_local:
        found.clock_offset_us, found.clock_uncertainty_us, found.clock_source = 0.0, 0.0, "this machine"
        return
    tracking = _run(hosts, host, "sh", "-c", "command -v chronyc >/dev/null && chronyc tracking")
    match = CHRONY_OFFSET_RE.search(tracking.stdout)
    if match:
        found.notes["chrony"] = f"{float(match.group(1)) * 1e6:.1f} µs {match.group(2)} of its NTP reference"
    ptp = _run(hosts, host, "sh", "-c", "command -v pmc >/dev/null && pmc -u -b 0 'GET TIME_STATUS_NP'")
    match = PTP_OFFSET_RE.search(ptp.stdout)
    if match:
        found.notes["linuxptp"] = f"{int(match.group(1)) / 1e3:.1f} µs from its PTP master"
    # One session, several readings: a handshake per reading would make the bracket (and so the
    # uncertainty) the ssh connection time; here it is one round trip over the open channel.
    argv = ["ssh", *hosts.ssh_options(), f"root@{host.address}", "while read x; do date +%s%N; done"]
    best: tuple[float, float] | None = None
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as session:
        assert session.stdin is not None and session.stdout is not None
        for _ in range(CLOCK_READINGS):
            before = time.clock_gettime_ns(time.CLOCK_REALTIME)
            session.stdin.write("\n")
            session.stdin.flush()
            line = session.stdout.readline().strip()
            after = time.clock_gettime_ns(time.CLOCK_REALTIME)
            if not line.isdigit():
                break
            half = (after - before) / 2
            if best is None or half / 1e3 < best[1]:
                best = ((int(line) - (before + half)) / 1e3, half / 1e3)
        session.stdin.close()
    if best is None:
        found.notes["clock"] = "could not read the host's clock over ssh"
        return
    found.clock_offset_us, found.clock_uncertainty_us = best
    found.clock_source = "ssh date, bracketed" + (" (the host shares this machine's clock)" if host.netns else "")


def check_host(hosts: ClusterHosts, host: ClusterHost, local_profile: str | None) -> HostCheck:
    found = HostCheck(host.name, host.address)
    if not host.is_local:
        done = _run(hosts, host, "true")
        found.checks["ssh"] = done.returncode == 0
        if not found.checks["ssh"]:
            found.notes["ssh"] = (done.stderr.strip()[-160:] or "failed") + \
                "; set up key-based ssh as root (README: running on real servers)"
            return found
    for tool in ("mnexec", "brctl", "sudo", "ping"):
        if host.is_local:
            found.checks[tool] = shutil.which(tool) is not None
        else:
            found.checks[tool] = _run(hosts, host, "sh", "-c", f"command -v {tool}").returncode == 0
    if not host.is_local:
        found.checks["sudo -n"] = _run(hosts, host, "sudo", "-n", "true").returncode == 0
        found.checks["testbed"] = _run(hosts, host, sys.executable, "-c", "import testbed.cluster.part").returncode == 0
        if not found.checks["testbed"]:
            found.notes["testbed"] = f"install the testbed at {sys.executable} on the host (README)"
    if host.is_local or host.netns is not None:
        found.profile = local_profile
        if host.netns is not None:
            found.notes["kernel"] = "emulated: this machine's kernel"
    else:
        done = _run(hosts, host, sys.executable, "-c", "from testbed.cli import main; main()", "doctor", "--json",
                    timeout=120)
        try:
            found.profile = json.loads(done.stdout)["auto"]
        except (json.JSONDecodeError, KeyError, TypeError):
            found.notes["profile"] = (done.stderr.strip()[-160:] or "pi2 doctor failed") + "; run `pi2 doctor` there"
        found.checks["profile"] = found.profile is not None
    if not host.is_local:
        found.checks["underlay mtu"] = hosts.underlay_mtu >= MIN_UNDERLAY_MTU
        if not found.checks["underlay mtu"]:
            found.notes["underlay mtu"] = (f"{hosts.underlay_mtu} < {MIN_UNDERLAY_MTU}: enable jumbo frames between the "
                                           f"hosts (tunnels carry 1514-byte primers)")
        latency = ping(hosts, "localhost", host.name)
        found.rtt_us, found.jitter_us = latency.rtt_us, latency.sd_us
    _clock(hosts, host, found)
    return found


def jitter_limit_us(tau_us: float) -> float:
    """The largest path jitter (the RTTs' robust sd) τ tolerates: 4 sigma of a neuron's T⁺ − T⁻ (√2 × one
    arrival's) within LATE_FRACTION_OF_TAU of τ."""
    return LATE_FRACTION_OF_TAU * tau_us / (4 * math.sqrt(2))


def refusals(found: list[HostCheck], tau_us: float | None) -> list[str]:
    """One line per problem: a failed check, or (with `tau_us`) a path too jittery for τ."""
    lines = [f"host {h.host}: {name} failed" + (f" ({h.notes[name]})" if name in h.notes else "")
             for h in found for name, ok in h.checks.items() if not ok]
    if tau_us is not None:
        limit = jitter_limit_us(tau_us)
        for h in found:
            if h.jitter_us is not None and h.jitter_us > limit:
                lines.append(f"host {h.host}: path jitter {h.jitter_us:.1f} µs exceeds {limit:.1f} µs, what τ "
                             f"{tau_us / 1e3:g} ms tolerates; use --tau ≥ "
                             f"{math.ceil(h.jitter_us / limit * tau_us / 100) / 10:g} ms or a quieter interconnect")
    return lines


def check_cluster(hosts: ClusterHosts, local_profile: str | None) -> list[HostCheck]:
    return [check_host(hosts, host, local_profile) for host in hosts.hosts]
