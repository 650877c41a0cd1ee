"""A minimal eBPF assembler and the bpf(2) calls the testbed needs, without clang.

This machine has no clang, and the gates are a few dozen instructions, so we write them as
Python calls that encode `struct bpf_insn` directly and load them with bpf(2) through ctypes.
Sources for every number below: include/uapi/linux/bpf.h and bpf_common.h (instruction
encoding, `union bpf_attr`, `struct __sk_buff`), Documentation/bpf/standardization/
instruction-set.rst (semantics), include/uapi/linux/pkt_cls.h (TC_ACT_*).

An instruction is 8 bytes in host byte order: u8 opcode, u8 registers (dst in the low nibble,
src in the high nibble on little-endian hosts), s16 offset, s32 immediate. `ld_imm64` takes two
slots. Jump offsets count slots from the instruction after the jump; `Assembler` resolves labels.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from testbed.errors import KernelError, NeedsRootError

# Instruction classes.
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# Memory access sizes (bytes 4, 2, 1, 8) and modes.
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, MEM, ATOMIC = 0x00, 0x60, 0xC0
# Operand source: the immediate (K) or the src register (X).
SRC_K, SRC_X = 0x00, 0x08
# ALU operations.
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0,
)
TO_BE = 0x08  # with END: convert between host order and big-endian (a no-op on BE hosts)
# Jump operations (JLT/JGT unsigned, JSLT/JSGT signed).
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0,
)
# Atomic operations, in the immediate of a STX|ATOMIC instruction. FETCH loads the old value into
# src; CMPXCHG compares R0 with memory, stores src if equal, and always loads the old value into R0.
# Both are fully ordered.
FETCH = 0x01
XCHG = 0xE0 | FETCH  # exchange: store src, load the old value into src (a full barrier)
CMPXCHG = 0xF0 | FETCH
# ld_imm64 with this src loads a map's kernel pointer from its fd.
PSEUDO_MAP_FD = 1

# Helper ids (enum bpf_func_id); none is GPL-only.
HELPER_MAP_LOOKUP_ELEM = 1
HELPER_GET_PRANDOM_U32 = 7
HELPER_SKB_PULL_DATA = 39

# struct __sk_buff field offsets (bytes): the context of a tc program.
SKB_LEN = 0
SKB_IFINDEX = 40
SKB_DATA = 76
SKB_DATA_END = 80
SKB_TSTAMP = 152  # u64: at tc ingress the RX stamp (CLOCK_REALTIME ns, what SO_TIMESTAMPNS reports), 0 if none
SKB_CTX_BYTES = 192  # sizeof(struct __sk_buff): what BPF_PROG_TEST_RUN takes as ctx_in

# Verdicts of a cls_bpf program in direct-action mode. UNSPEC lets later filters decide.
TC_ACT_UNSPEC = -1
TC_ACT_OK = 0
TC_ACT_SHOT = 2

PROG_TYPE_SCHED_CLS = 3
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_ARRAY_OF_MAPS = 12  # values are other maps (given by fd, read in a program as a map pointer)

# bpf(2) commands.
CMD_MAP_CREATE = 0
CMD_MAP_LOOKUP_ELEM = 1
CMD_MAP_UPDATE_ELEM = 2
CMD_PROG_LOAD = 5
CMD_PROG_TEST_RUN = 10

OBJ_NAME_BYTES = 16  # BPF_OBJ_NAME_LEN, NUL included
_ATTR_BYTES = 128  # larger than every command we use; the kernel accepts a zero tail
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_LOG_BYTES = 1 << 20


class Reg(int):
    """A register number, so helpers can tell `mov(R1, R2)` from `mov(R1, 2)`."""

    def __repr__(self) -> str:
        return f"R{int(self)}"


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = (Reg(n) for n in range(11))
FP = R10  # read-only frame pointer; the stack is the 512 bytes below it


@dataclass(frozen=True)
class Insn:
    """One `struct bpf_insn`; `off` may name a label until `Assembler.assemble` resolves it."""

    code: int
    dst: int = 0
    src: int = 0
    off: int | str = 0
    imm: int = 0

    def encode(self) -> bytes:
        if isinstance(self.off, str):
            raise KernelError(f"bpf: jump to label {self.off!r} was never resolved; assemble through Assembler")
        regs = (self.src << 4) | self.dst if sys.byteorder == "little" else (self.dst << 4) | self.src
        return struct.pack("=BBhi", self.code, regs, self.off, self.imm)


def _operand(value: int) -> tuple[int, int, int]:
    """(source bit, src register, immediate) for a register or a 32-bit immediate operand."""
    if isinstance(value, Reg):
        return SRC_X, int(value), 0
    if not -(1 << 31) <= value < (1 << 31):
        raise KernelError(f"bpf: immediate {value} does not fit in 32 bits; use ld_imm64")
    return SRC_K, 0, value


def alu64(op: int, dst: Reg, value: int) -> Insn:
    """dst = dst <op> value on 64 bits (immediates are sign-extended)."""
    source, src, imm = _operand(value)
    return Insn(ALU64 | op | source, dst, src, 0, imm)


def alu32(op: int, dst: Reg, value: int) -> Insn:
    """dst = (u32)(dst <op> value): the upper 32 bits of dst become zero."""
    source, src, imm = _operand(value)
    return Insn(ALU | op | source, dst, src, 0, imm)


def mov64(dst: Reg, value: int) -> Insn:
    return alu64(MOV, dst, value)


def mov32(dst: Reg, value: int) -> Insn:
    return alu32(MOV, dst, value)


def to_be(dst: Reg, bits: int) -> Insn:
    """Swap dst between big-endian and host order (a network-order field into a number)."""
    if bits not in (16, 32, 64):
        raise KernelError(f"bpf: byte swap width {bits}; expected 16, 32 or 64")
    return Insn(ALU | END | TO_BE, dst, 0, 0, bits)


def ldx(size: int, dst: Reg, src: Reg, off: int) -> Insn:
    """dst = *(size *)(src + off), zero-extended."""
    return Insn(LDX | MEM | size, dst, src, off, 0)


def stx(size: int, dst: Reg, src: Reg, off: int) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(STX | MEM | size, dst, src, off, 0)


def st(size: int, dst: Reg, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(ST | MEM | size, dst, 0, off, imm)


def atomic(size: int, dst: Reg, src: Reg, off: int, op: int) -> Insn:
    """Atomic read-modify-write of *(size *)(dst + off) (size W or DW); see FETCH and CMPXCHG."""
    if size not in (W, DW):
        raise KernelError(f"bpf: atomic operations take W or DW, got size code {size:#x}")
    return Insn(STX | ATOMIC | size, dst, src, off, op)


def ld_imm64(dst: Reg, value: int, src: int = 0) -> tuple[Insn, Insn]:
    """dst = a 64-bit constant (two slots: low word, then high word)."""
    value &= (1 << 64) - 1
    low, high = value & 0xFFFFFFFF, value >> 32
    as_s32 = lambda word: word - (1 << 32) if word >= 1 << 31 else word  # noqa: E731
    return Insn(LD | IMM | DW, dst, src, 0, as_s32(low)), Insn(0, 0, 0, 0, as_s32(high))


def ld_map_fd(dst: Reg, map_fd: int) -> tuple[Insn, Insn]:
    """dst = the map behind `map_fd` (the verifier swaps the fd for the map's address)."""
    return ld_imm64(dst, map_fd, src=PSEUDO_MAP_FD)


def jmp(op: int, dst: Reg, value: int, target: str) -> Insn:
    """if (dst <op> value) goto target, comparing 64 bits."""
    source, src, imm = _operand(value)
    return Insn(JMP | op | source, dst, src, target, imm)


def jmp32(op: int, dst: Reg, value: int, target: str) -> Insn:
    """if ((u32/s32)dst <op> value) goto target, comparing the low 32 bits."""
    source, src, imm = _operand(value)
    return Insn(JMP32 | op | source, dst, src, target, imm)


def ja(target: str) -> Insn:
    return Insn(JMP | JA, 0, 0, target, 0)


def call(helper: int) -> Insn:
    """Call a kernel helper: arguments in R1..R5, result in R0; R1..R5 are clobbered."""
    return Insn(JMP | CALL, 0, 0, 0, helper)


def exit_insn() -> Insn:
    return Insn(JMP | EXIT)


class Assembler:
    """Collects instructions and labels; `assemble()` turns label jumps into slot offsets."""

    def __init__(self) -> None:
        self._insns: list[Insn] = []
        self._labels: dict[str, int] = {}

    def emit(self, *items: Insn | tuple[Insn, ...]) -> None:
        for item in items:
            self._insns.extend(item if isinstance(item, tuple) else (item,))

    def label(self, name: str) -> None:
        if name in self._labels:
            raise KernelError(f"bpf: label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def assemble(self) -> bytes:
        out = []
        for index, insn in enumerate(self._insns):
            if isinstance(insn.off, str):
                if insn.off not in self._labels:
                    raise KernelError(f"bpf: jump at slot {index} to undefined label {insn.off!r}")
                offset = self._labels[insn.off] - (index + 1)
                if not -(1 << 15) <= offset < (1 << 15):
                    raise KernelError(f"bpf: jump at slot {index} to {insn.off!r} spans {offset} slots; max ±32767")
                insn = replace(insn, off=offset)
            out.append(insn.encode())
        return b"".join(out)


def _syscall_number() -> int:
    machine = platform.machine()
    if machine not in _NR_BPF:
        raise KernelError(f"bpf: no bpf(2) syscall number known for machine {machine!r}; known: {sorted(_NR_BPF)}")
    return _NR_BPF[machine]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    """Run one bpf(2) command; a failure becomes a KernelError naming `what` and errno."""
    result = _libc.syscall(_syscall_number(), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        code = ctypes.get_errno()
        message = f"bpf: {what} failed: {os.strerror(code)} (errno {code})"
        if code == errno.EPERM:  # the verifier reports refusals as EACCES/EINVAL, never EPERM
            raise NeedsRootError(message + "; run as root (CAP_BPF and CAP_NET_ADMIN)")
        raise KernelError(message)
    return int(result)


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array:
    """A zeroed `union bpf_attr` with (offset, struct format, value) fields filled in."""
    buf = ctypes.create_string_buffer(_ATTR_BYTES)
    for offset, fmt, value in fields:
        struct.pack_into("=" + fmt, buf, offset, value)
    return buf


def _address(buf: ctypes.Array | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def check_name(name: str) -> bytes:
    """An object name as the kernel accepts it: ≤ 15 chars of [A-Za-z0-9_.]; ours start with p2."""
    ok = name.startswith("p2") and len(name) < OBJ_NAME_BYTES and all(c.isascii() and (c.isalnum() or c in "_.") for c in name)
    if not ok:
        raise KernelError(f"bpf: object name {name!r} rejected; use 'p2' + at most 13 of [A-Za-z0-9_.]")
    return name.encode()


def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (cpus the kernel may ever bring up)."""
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class BpfMap:
    """An array map owned through its fd: u32 keys 0..max_entries-1, fixed-size values."""

    def __init__(self, map_type: int, value_bytes: int, max_entries: int, name: str, inner_map_fd: int = 0) -> None:
        self.map_type = map_type
        self.value_bytes = value_bytes
        self.max_entries = max_entries
        self.name = name
        # union bpf_attr, anonymous struct for BPF_MAP_CREATE: map_type, key_size, value_size,
        # max_entries, map_flags, inner_map_fd, numa_node (u32 each), then map_name[16] at 28.
        # A map of maps takes the fd of a map its members must look like (`inner_map_fd`).
        attr = _attr((0, "I", map_type), (4, "I", 4), (8, "I", value_bytes), (12, "I", max_entries),
                     (20, "I", inner_map_fd))
        ctypes.memmove(ctypes.addressof(attr) + 28, check_name(name), len(name))
        self.fd: int | None = _bpf(CMD_MAP_CREATE, attr, f"creating map {name!r}")

    @property
    def lookup_bytes(self) -> int:
        """Bytes one lookup returns: per-CPU maps return one 8-byte-aligned value per possible CPU."""
        if self.map_type == MAP_TYPE_PERCPU_ARRAY:
            return possible_cpus() * ((self.value_bytes + 7) // 8 * 8)
        return self.value_bytes

    def _elem_attr(self, key: ctypes.Array, value: ctypes.Array, flags: int = 0) -> ctypes.Array:
        if self.fd is None:
            raise KernelError(f"bpf: map {self.name!r} is closed")
        # BPF_MAP_*_ELEM: u32 map_fd, (pad), u64 key pointer, u64 value pointer, u64 flags.
        return _attr((0, "I", self.fd), (8, "Q", _address(key)), (16, "Q", _address(value)), (24, "Q", flags))

    def lookup(self, key: int) -> bytes:
        key_buf = ctypes.create_string_buffer(struct.pack("=I", key), 4)
        value = ctypes.create_string_buffer(self.lookup_bytes)
        _bpf(CMD_MAP_LOOKUP_ELEM, self._elem_attr(key_buf, value), f"reading key {key} of map {self.name!r}")
        return value.raw

    def update(self, key: int, value: bytes) -> None:
        if len(value) != self.lookup_bytes:
            raise KernelError(f"bpf: value for map {self.name!r} has {len(value)} B; expected {self.lookup_bytes} B")
        key_buf = ctypes.create_string_buffer(struct.pack("=I", key), 4)
        value_buf = ctypes.create_string_buffer(value, len(value))
        _bpf(CMD_MAP_UPDATE_ELEM, self._elem_attr(key_buf, value_buf), f"writing key {key} of map {self.name!r}")

    def clear(self) -> None:
        """Zero every entry (array maps cannot delete keys)."""
        zero = bytes(self.lookup_bytes)
        for key in range(self.max_entries):
            self.update(key, zero)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LoadedProgram:
    """A loaded program and the maps it reads, owned through their fds until `close()` (or the
    end of a `with` block). Closing drops only our references: a filter that was attached keeps
    program and maps alive until the filter or its device goes.

    A subclass makes its maps with `own(BpfMap(...))` and sets `_fd` inside `with self.loading():`,
    which closes whatever was made if loading fails; `what` names it in errors."""

    what = "bpf program"

    def __init__(self, name: str) -> None:
        check_name(name)
        self.name = name
        self._fd: int | None = None
        self._maps: list[BpfMap] = []

    def own(self, owned: BpfMap) -> BpfMap:
        self._maps.append(owned)
        return owned

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise KernelError(f"{self.what} {self.name!r} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for owned in self._maps:
            owned.close()
        self._maps = []

    def __enter__(self) -> "LoadedProgram":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_program(code: bytes, name: str, prog_type: int = PROG_TYPE_SCHED_CLS, license: str = "Apache-2.0") -> int:
    """Load bytecode and return the program's fd; a refusal raises KernelError with the verifier log.

    The first attempt runs without a log (the log costs time); only a refused program is loaded
    again with log_level 1 so the error can show where the verifier stopped.
    """
    if len(code) % 8:
        raise KernelError(f"bpf: program {name!r} is {len(code)} B, not a whole number of 8-byte instructions")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log: ctypes.Array | None) -> int:
        # BPF_PROG_LOAD: prog_type, insn_cnt, insns*, license*, log_level, log_size, log_buf*,
        # kern_version, prog_flags, prog_name[16] at 48.
        attr = _attr(
            (0, "I", prog_type), (4, "I", len(code) // 8), (8, "Q", _address(insns)), (16, "Q", _address(lic)),
            (24, "I", 0 if log is None else 1), (28, "I", 0 if log is None else len(log)), (32, "Q", _address(log)),
        )
        ctypes.memmove(ctypes.addressof(attr) + 48, check_name(name), len(name))
        return _bpf(CMD_PROG_LOAD, attr, f"loading program {name!r}")

    try:
        return attempt(None)
    except NeedsRootError:
        raise
    except KernelError as first:
        log = ctypes.create_string_buffer(_LOG_BYTES)
        try:
            fd = attempt(log)
        except KernelError:
            tail = "\n".join(log.value.decode(errors="replace").strip().splitlines()[-25:])
            raise KernelError(f"{first}; verifier log (last lines):\n{tail}") from None
        os.close(fd)  # refused once, accepted with a log: report the first refusal, never hide it
        raise


@dataclass(frozen=True)
class ProgRun:
    """What BPF_PROG_TEST_RUN reports: the program's verdict, its mean run time, and the frame as
    the program left it."""

    retval: int  # the program's R0 as a signed 32-bit number (TC_ACT_*)
    duration_ns: int  # mean over `repeat` runs, measured by the kernel
    frame: bytes = b""  # the packet data after the last run (a program may rewrite it)


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1, tstamp_ns: int = 0) -> ProgRun:
    """Run a loaded tc program on one Ethernet frame inside the kernel (no device involved).

    The kernel builds an skb from `frame` as if it were received, with skb->tstamp = `tstamp_ns`
    (a receive stamp, as at tc ingress), runs the program `repeat` times back to back, and returns
    the last verdict, the mean time per run and the frame as the program left it.
    """
    if repeat < 1:
        raise KernelError(f"bpf: prog_test_run repeat={repeat}; expected >= 1")
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)  # room for a program that grows the frame
    ctx = ctypes.create_string_buffer(SKB_CTX_BYTES)
    struct.pack_into("=Q", ctx, SKB_TSTAMP, tstamp_ns)
    # BPF_PROG_TEST_RUN: prog_fd, retval (out), data_size_in, data_size_out (in: room, out: bytes),
    # data_in*, data_out*, repeat, duration (out, ns), ctx_size_in, ctx_size_out, ctx_in*, ctx_out*.
    attr = _attr((0, "I", prog_fd), (8, "I", len(frame)), (12, "I", len(out)), (16, "Q", _address(data)),
                 (24, "Q", _address(out)), (32, "I", repeat), (40, "I", len(ctx)), (48, "Q", _address(ctx)))
    _bpf(CMD_PROG_TEST_RUN, attr, f"test-running program fd {prog_fd}")
    retval, = struct.unpack_from("=i", attr, 4)
    size_out, = struct.unpack_from("=I", attr, 12)
    duration, = struct.unpack_from("=I", attr, 36)
    return ProgRun(retval=retval, duration_ns=duration, frame=out.raw[:size_out])
