"""Can tc-native objects compute the π²_K neuron? police, gact and sch_cbs measured with real packets.

Runs where the kernel has act_police, act_gact and sch_cbs (the user-mode-linux guest, a distribution
kernel); the CI host kernel has none of them. Two namespaces ``p2<run>a`` / ``p2<run>b`` joined by a veth
pair; UDP spikes (60-byte frames, a sequence number in the payload) go from a to b. police and gact act on
b's clsact ingress (where the first-K gate sits in a plan); cbs shapes a's egress. The receiver counts what
arrives and reads kernel RX timestamps (SO_TIMESTAMPNS). Everything is removed at the end, also on error.

    pi2 guest --timeout 300 -- python bench/tc_neurons.py --out -

Questions (docs/cbs-neuron.md reports the answers):
- police (byte mode: a bucket of K spikes + ½, refilling one spike per 9.2 s), conform → pass, exceed → drop:
  does a burst, and do spaced arrivals, pass exactly the first K? does replacing the action refill it (how
  fast)? what do late spikes of the previous sample do to the next? (packet mode is tried too)
- police as a threshold: police(burst K−1, conform → drop, exceed → pipe) → police(burst 1, conform → pass):
  does exactly the K-th arrival pass?
- gact random drop: `netrand drop N` drops 1 in N on average, `determ drop N` every N-th.
- cbs (software mode, offload 0): the departure spacing of a burst, what locredit/hicredit change, and what
  a child pfifo of limit K−1 does to a burst and to spaced arrivals.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import struct
import subprocess
import time
from typing import Any, Iterator
from contextlib import contextmanager

from testbed.kernel import netns
from testbed.kernel.names import new_run_id, object_name

PORT = 5402
PAYLOAD_BYTES = 18  # 14 + 20 + 8 + 18 = 60-byte frames, as qdiscs count them
FRAME_BYTES = 60
SO_TIMESTAMPNS = 35
A_IP, B_IP = "198.18.200.1", "198.18.200.2"


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@contextmanager
def pair(run: str) -> Iterator[tuple[str, str, str, str]]:
    """Namespaces a, b and veth ends va (in a), vb (in b), addressed, with static neighbours."""
    a, b = object_name(run, "a"), object_name(run, "b")
    va, vb = object_name(run, "va"), object_name(run, "vb")
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, ip in ((a, va, A_IP), (b, vb, B_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        mac_b = json.loads(sh("ip", "-n", b, "-j", "link", "show", vb))[0]["address"]
        mac_a = json.loads(sh("ip", "-n", a, "-j", "link", "show", va))[0]["address"]
        sh("ip", "-n", a, "neigh", "replace", B_IP, "lladdr", mac_b, "dev", va, "nud", "permanent")
        sh("ip", "-n", b, "neigh", "replace", A_IP, "lladdr", mac_a, "dev", vb, "nud", "permanent")
        yield a, b, va, vb
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Link:
    def __init__(self, a: str, b: str) -> None:
        self.tx = netns.socket_in(a, socket.AF_INET, socket.SOCK_DGRAM)
        self.rx = netns.socket_in(b, socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.rx.setsockopt(socket.SOL_SOCKET, netns.SO_RCVBUFFORCE, 1 << 26)
        self.rx.bind((B_IP, PORT))
        self.seq = 0

    def send(self, n: int, gap_s: float = 0.0) -> list[int]:
        """n spikes, back to back or `gap_s` apart (busy-wait pacing); returns their sequence numbers."""
        sent = []
        start = time.perf_counter()
        for i in range(n):
            if gap_s:
                while time.perf_counter() < start + i * gap_s:
                    pass
            self.tx.sendto(struct.pack("!I", self.seq).ljust(PAYLOAD_BYTES, b"\0"), (B_IP, PORT))
            sent.append(self.seq)
            self.seq += 1
        return sent

    def receive(self, settle_s: float) -> list[tuple[int, int]]:
        """(seq, kernel RX ns) of everything that arrives until `settle_s` passes with nothing new."""
        out = []
        self.rx.settimeout(settle_s)
        while True:
            try:
                data, anc, _, _ = self.rx.recvmsg(64, 64)
            except socket.timeout:
                return out
            stamp = next(struct.unpack("=qq", d[:16]) for lvl, typ, d in anc if typ == SO_TIMESTAMPNS)
            out.append((struct.unpack("!I", data[:4])[0], stamp[0] * 10**9 + stamp[1]))

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


INGRESS_SPIKE_BYTES = FRAME_BYTES - 14  # at clsact ingress the Ethernet header is already pulled: 46 B
POLICE_RATE_BPS = 40  # a rate whose burst of 24 spikes fits police's u32 burst (in 64 ns ticks, ≤ 274 s)


def police_args(index: int, k: int, conform: str, exceed: str) -> list[str]:
    """police passing `k` spikes from a full bucket: burst = k spikes + half a spike, so the (k+1)-th finds
    half a spike of tokens; a spike's tokens return only after 46·8/40 = 9.2 s."""
    burst = k * INGRESS_SPIKE_BYTES + INGRESS_SPIKE_BYTES // 2
    return ["action", "police", "index", str(index), "rate", f"{POLICE_RATE_BPS}bit", "burst", str(burst),
            "mtu", "2000", "conform-exceed", f"{exceed}/{conform}"]


def ingress(b: str, vb: str, *actions: str) -> None:
    """One u32 match-all filter on vb's clsact ingress running `actions`, replacing what was there."""
    sh("tc", "-n", b, "qdisc", "replace", "dev", vb, "clsact")
    subprocess.run(["tc", "-n", b, "filter", "del", "dev", vb, "ingress"], capture_output=True)
    sh("tc", "-n", b, "filter", "add", "dev", vb, "ingress", "prio", "1", "protocol", "ip", "u32",
       "match", "u32", "0", "0", *actions)


def police_packet_mode(link: Link, b: str, vb: str) -> dict[str, Any]:
    """pkts_rate/pkts_burst (packets per second, burst in packets), which would avoid the L3-byte arithmetic:
    with a burst of 3 packets, and of 3 s of 64 ns ticks, at 1 packet/s."""
    rows = []
    for label, burst in (("pkts_burst 3", 3), ("pkts_burst 3 s in ticks", 3 * 15_625_000)):
        ingress(b, vb, "action", "police", "index", "1", "pkts_rate", "1", "pkts_burst", str(burst),
                "conform-exceed", "drop/pass")
        link.send(10)
        rows.append({"police": label, "sent": 10, "passed": len(link.receive(0.3))})
    return {"rows": rows}


def police_first_k(link: Link, b: str, vb: str) -> dict[str, Any]:
    rows = []
    for k in (1, 3, 8, 24):
        ingress(b, vb, *police_args(1, k, "pass", "drop"))
        sent = link.send(40)
        got = [s for s, _ in link.receive(0.3)]
        link.send(40)
        second = [s for s, _ in link.receive(0.3)]
        t0 = time.perf_counter()
        sh("tc", "-n", b, "actions", "replace", *police_args(1, k, "pass", "drop"))
        replace_ms = (time.perf_counter() - t0) * 1e3
        link.send(40)
        third = [s for s, _ in link.receive(0.3)]
        sh("tc", "-n", b, "actions", "replace", *police_args(1, k, "pass", "drop"))
        spaced_sent = link.send(30, gap_s=0.003)
        spaced = [s for s, _ in link.receive(0.3)]
        # Two late spikes of the previous sample after the refill: the bucket has no sample id.
        sh("tc", "-n", b, "actions", "replace", *police_args(1, k, "pass", "drop"))
        link.send(2)
        link.send(40)
        after_late = len(link.receive(0.3)) - min(2, k)
        rows.append({"k": k, "burst_of": 40, "passed_first_burst": len(got), "passed_are_first_k": got == sent[:k],
                     "passed_second_burst_no_refill": len(second), "passed_after_replace": len(third),
                     "replace_ms_one_tc_process": round(replace_ms, 2), "spaced_3ms_of": 30,
                     "spaced_passed": len(spaced), "spaced_passed_are_first_k": spaced == spaced_sent[:k],
                     "next_sample_passed_after_2_late_spikes": after_late})
    return {"rows": rows}


def police_threshold(link: Link, b: str, vb: str) -> dict[str, Any]:
    rows = []
    for k in (2, 4):
        # First police absorbs K−1 spikes (conform → drop), lets later ones on (exceed → pipe) into the
        # second, which passes one (conform → pass) and drops the rest.
        ingress(b, vb, *police_args(1, k - 1, "drop", "pipe"), *police_args(2, 1, "pass", "drop"))
        sent = link.send(10, gap_s=0.005)
        got = [s for s, _ in link.receive(0.3)]
        rows.append({"k": k, "sent": 10, "passed": len(got), "passed_is_kth": got == [sent[k - 1]]})
    return {"rows": rows}


def gact_loss(link: Link, b: str, vb: str, n: int) -> dict[str, Any]:
    rows = []
    for mode, one_in in (("netrand", 2), ("netrand", 10), ("determ", 4)):
        ingress(b, vb, "action", "gact", "pass", "random", mode, "drop", str(one_in))
        got = []
        for _ in range(n // 100):
            link.send(100)
            got += link.receive(0.05)
        rows.append({"mode": mode, "drop_one_in": one_in, "sent": n, "received": len(got),
                     "drop_fraction": round(1 - len(got) / n, 4), "expected": round(1 / one_in, 4)})
    sh("tc", "-n", b, "qdisc", "del", "dev", vb, "clsact")
    return {"rows": rows}


def gaps_ms(arrivals: list[tuple[int, int]]) -> list[float]:
    t = [ns for _, ns in arrivals]
    return [round((y - x) / 1e6, 3) for x, y in zip(t, t[1:])]


def cbs(link: Link, a: str, va: str) -> dict[str, Any]:
    rows = []
    # idleslope I, sendslope S = I − port rate (kbit/s), hi/locredit in bytes. tc/cbs read the port rate from
    # ethtool (veth: 10 Gbit/s); a frame then costs credit L·(I − S)/R ≈ L and refills at I.
    cases = [
        {"name": "burst, default credits", "idleslope": 100, "hicredit": 0, "locredit": -1_000_000, "child_limit": None,
         "n": 8, "gap_ms": 0},
        {"name": "burst, locredit = -1 frame", "idleslope": 100, "hicredit": 0, "locredit": -FRAME_BYTES,
         "child_limit": None, "n": 8, "gap_ms": 0},
        {"name": "burst, locredit = -1/2 frame", "idleslope": 100, "hicredit": 0, "locredit": -FRAME_BYTES // 2,
         "child_limit": None, "n": 8, "gap_ms": 0},
        {"name": "burst, hicredit = 3 frames", "idleslope": 100, "hicredit": 3 * FRAME_BYTES, "locredit": -1_000_000,
         "child_limit": None, "n": 8, "gap_ms": 0},
        {"name": "burst into child pfifo limit 2 (first-K, K = 3?)", "idleslope": 100, "hicredit": 0,
         "locredit": -1_000_000, "child_limit": 2, "n": 10, "gap_ms": 0},
        {"name": "10 arrivals 2 ms apart, child pfifo limit 2", "idleslope": 100, "hicredit": 0,
         "locredit": -1_000_000, "child_limit": 2, "n": 10, "gap_ms": 2},
        {"name": "10 arrivals 8 ms apart, child pfifo limit 2", "idleslope": 100, "hicredit": 0,
         "locredit": -1_000_000, "child_limit": 2, "n": 10, "gap_ms": 8},
    ]
    for case in cases:
        subprocess.run(["tc", "-n", a, "qdisc", "del", "dev", va, "root"], capture_output=True)
        send_kbit = case["idleslope"] - 10_000_000
        sh("tc", "-n", a, "qdisc", "add", "dev", va, "root", "handle", "1:", "cbs", "idleslope", str(case["idleslope"]),
           "sendslope", str(send_kbit), "hicredit", str(case["hicredit"]), "locredit", str(case["locredit"]),
           "offload", "0")
        if case["child_limit"] is not None:
            sh("tc", "-n", a, "qdisc", "add", "dev", va, "parent", "1:1", "handle", "2:", "pfifo", "limit",
               str(case["child_limit"]))
        t_send = time.time_ns()
        link.send(case["n"], gap_s=case["gap_ms"] / 1e3)
        got = link.receive(1.5)
        rows.append({**case, "sendslope": send_kbit, "sent": case["n"], "received": len(got),
                     "seqs": [s for s, _ in got], "first_rx_after_send_call_ms": round((got[0][1] - t_send) / 1e6, 3) if got else None,
                     "gaps_ms": gaps_ms(got),
                     "expected_gap_ms": round(FRAME_BYTES * 8 / case["idleslope"], 3)})
        link.seq += 1000  # fresh sequence space per case
    subprocess.run(["tc", "-n", a, "qdisc", "del", "dev", va, "root"], capture_output=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gact-packets", type=int, default=4000)
    parser.add_argument("--out", default="bench/results/tc_neurons.json", help="JSON file, or - for stdout")
    args = parser.parse_args()
    run = new_run_id()
    with pair(run) as (a, b, va, vb):
        link = Link(a, b)
        try:
            link.send(1)
            link.receive(0.2)  # the path works before anything is measured
            result = {"kernel": platform.release(), "frame_bytes": FRAME_BYTES,
                      "police_packet_mode": police_packet_mode(link, b, vb),
                      "police_first_k": police_first_k(link, b, vb),
                      "police_threshold": police_threshold(link, b, vb),
                      "gact_loss": gact_loss(link, b, vb, args.gact_packets),
                      "cbs": cbs(link, a, va)}
        finally:
            link.close()
    text = json.dumps(result, indent=1)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
