"""Kernel-test fixtures: a fresh run whose every object is removed in teardown, and UDP
endpoints inside namespaces that read kernel RX timestamps (SO_TIMESTAMPNS)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Iterator

import pytest

from testbed.kernel import cleanup, netns
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry

SO_TIMESTAMPNS = 35  # asm-generic/socket.h; the cmsg carries a struct timespec
TIMESPEC = struct.Struct("=qq")
PORT = 5402


@pytest.fixture
def run() -> Iterator[RunRegistry]:
    """A fresh run id with a registry; teardown removes everything the run made, even on failure."""
    reg = RunRegistry.create()
    try:
        yield reg
    finally:
        try:
            if reg.path.exists():  # a test may have taken the run down itself
                cleanup.down(reg.run_id)
        finally:
            cleanup.clean(frozenset({reg.run_id}))  # the registry a killed child made for this id


@pytest.fixture
def builder(run: RunRegistry) -> Iterator[LinkBuilder]:
    with LinkBuilder(run) as lb:
        yield lb


@dataclass
class Pair:
    """Sender namespace `tx` ─veth─ receiver namespace `rx`, addressed, ARP pinned, up."""

    tx: str
    rx: str
    tx_if: str
    rx_if: str
    tx_ip: str = "10.77.0.1"
    rx_ip: str = "10.77.0.2"


class Net:
    """Helpers for building test topologies and moving real packets through them."""

    def __init__(self, lb: LinkBuilder) -> None:
        self.lb = lb

    def connect(self, tx: str, rx: str, tx_suffix: str, rx_suffix: str, net: str = "10.77.0") -> Pair:
        return connect(self.lb, tx, rx, tx_suffix, rx_suffix, net)

    def sender(self, ns: str) -> socket.socket:
        return sender(ns)

    def receiver(self, ns: str, port: int = PORT, bind_ip: str = "0.0.0.0") -> socket.socket:
        return receiver(ns, port, bind_ip)

    def receive(self, sock: socket.socket, count: int, timeout_s: float = 2.0) -> list[tuple[bytes, int]]:
        return receive(sock, count, timeout_s)


@pytest.fixture
def net(builder: LinkBuilder) -> Net:
    return Net(builder)


def connect(lb: LinkBuilder, tx: str, rx: str, tx_suffix: str, rx_suffix: str, net: str = "10.77.0") -> Pair:
    tx_if, rx_if = lb.veth(tx_suffix, rx_suffix, tx, rx)
    pair = Pair(tx, rx, tx_if, rx_if, f"{net}.1", f"{net}.2")
    macs = {tx_if: "02:77:00:00:00:01", rx_if: "02:77:00:00:00:02"}
    for ifname, ns, ip in ((tx_if, tx, pair.tx_ip), (rx_if, rx, pair.rx_ip)):
        lb.mac(ifname, macs[ifname], ns)
        lb.address(ifname, ip, 24, ns)
        lb.up(ifname, ns)
    lb.neighbour(tx_if, pair.rx_ip, macs[rx_if], tx)
    lb.neighbour(rx_if, pair.tx_ip, macs[tx_if], rx)
    return pair


@pytest.fixture
def pair(builder: LinkBuilder) -> Pair:
    return connect(builder, builder.namespace("tx"), builder.namespace("rx"), "t", "r")


def sender(ns: str) -> socket.socket:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    return sock


def receiver(ns: str, port: int = PORT, bind_ip: str = "0.0.0.0") -> socket.socket:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((bind_ip, port))
    return sock


def receive(sock: socket.socket, count: int, timeout_s: float = 2.0) -> list[tuple[bytes, int]]:
    """Up to `count` datagrams as (payload, kernel RX time in ns); stops early on timeout."""
    sock.settimeout(timeout_s)
    got = []
    while len(got) < count:
        try:
            data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(TIMESPEC.size))
        except socket.timeout:
            break
        stamps = [TIMESPEC.unpack(c[2][: TIMESPEC.size]) for c in ancdata
                  if c[0] == socket.SOL_SOCKET and c[1] == SO_TIMESTAMPNS]
        if not stamps:
            raise AssertionError("datagram without a kernel RX timestamp")
        sec, nsec = stamps[0]
        got.append((data, sec * 1_000_000_000 + nsec))
    return got
