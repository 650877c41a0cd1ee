"""The eBPF assembler's encoding (golden bytes, no root) and the bpf(2) calls on the real kernel (root)."""

from __future__ import annotations

import os
import struct
import sys

import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import DW, FP, JEQ, JNE, JSGT, W, R0, R1, R2, R4, R6, R7, R8, R9

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="golden bytes are for little-endian hosts")


@little_endian
@pytest.mark.parametrize(
    ("insn", "golden"),
    [
        (bpf.mov64(R0, 0), "b700000000000000"),
        (bpf.mov64(R6, R1), "bf16000000000000"),
        (bpf.mov32(R2, R1), "bc12000000000000"),
        (bpf.alu64(bpf.ADD, R2, -4), "07020000fcffffff"),
        (bpf.alu64(bpf.LSH, R8, 32), "6708000020000000"),
        (bpf.alu32(bpf.SUB, R4, R2), "1c24000000000000"),
        (bpf.ldx(W, R2, R6, bpf.SKB_DATA), "61624c0000000000"),
        (bpf.ldx(DW, R1, R9, 0), "7991000000000000"),
        (bpf.stx(W, FP, R1, -4), "631afcff00000000"),
        (bpf.st(W, FP, -4, 0), "620afcff00000000"),
        (bpf.to_be(R7, 32), "dc07000020000000"),
        (bpf.atomic(DW, R9, R8, 0, bpf.CMPXCHG), "db890000f1000000"),
        (bpf.atomic(W, R9, R2, 4, bpf.ADD | bpf.FETCH), "c329040001000000"),
        (bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), "8500000001000000"),
        (bpf.exit_insn(), "9500000000000000"),
    ],
)
def test_instruction_golden_bytes(insn: bpf.Insn, golden: str) -> None:
    assert insn.encode().hex() == golden


@little_endian
def test_ld_imm64_and_map_fd_take_two_slots() -> None:
    assert b"".join(i.encode() for i in bpf.ld_map_fd(R1, 5)).hex() == "1811000005000000" "0000000000000000"
    wide = bpf.ld_imm64(R2, 0x1_2345_6789)
    assert b"".join(i.encode() for i in wide).hex() == "1802000089674523" "0000000001000000"
    assert bpf.ld_imm64(R2, -1)[1].imm == -1  # high word 0xffffffff as a signed s32


@little_endian
def test_assembler_resolves_forward_and_backward_labels_counting_wide_slots() -> None:
    a = bpf.Assembler()
    a.label("top")
    a.emit(bpf.jmp(JEQ, R1, 0, "end"))  # slot 0 -> slot 4: off 3 (ld_imm64 counts twice)
    a.emit(bpf.ld_imm64(R2, 7))  # slots 1-2
    a.emit(bpf.jmp32(JSGT, R2, R1, "top"))  # slot 3 -> slot 0: off -4
    a.label("end")
    a.emit(bpf.exit_insn())
    code = a.assemble()
    assert len(code) == 5 * 8
    assert code[0:8].hex() == "1501030000000000"
    assert code[24:32].hex() == "6e12fcff00000000"


def test_assembler_rejects_unknown_and_duplicate_labels() -> None:
    a = bpf.Assembler()
    a.emit(bpf.ja("nowhere"))
    with pytest.raises(KernelError, match="undefined label 'nowhere'"):
        a.assemble()
    a.label("x")
    with pytest.raises(KernelError, match="defined twice"):
        a.label("x")
    with pytest.raises(KernelError, match="never resolved"):
        bpf.ja("x").encode()


def test_operands_are_checked() -> None:
    with pytest.raises(KernelError, match="does not fit in 32 bits"):
        bpf.mov64(R1, 1 << 32)
    with pytest.raises(KernelError, match="byte swap width"):
        bpf.to_be(R1, 8)
    with pytest.raises(KernelError, match="atomic operations take W or DW"):
        bpf.atomic(bpf.H, R1, R2, 0, bpf.ADD)


@pytest.mark.parametrize("name", ["gate", "p2" + "x" * 14, "p2-gate", "p2 gate"])
def test_object_names_must_be_ours_and_kernel_valid(name: str) -> None:
    with pytest.raises(KernelError, match="object name"):
        bpf.check_name(name)


def _program(*insns: bpf.Insn | tuple[bpf.Insn, ...]) -> bytes:
    a = bpf.Assembler()
    a.emit(*insns)
    return a.assemble()


@pytest.mark.root
def test_loaded_program_runs_in_the_kernel() -> None:
    fd = bpf.load_program(_program(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn()), "p2_test_drop")
    try:
        assert bpf.prog_test_run(fd, bytes(64), repeat=10).retval == bpf.TC_ACT_SHOT
    finally:
        os.close(fd)


@pytest.mark.root
def test_a_test_run_hands_the_program_our_frame() -> None:
    """The program returns skb->len: only the frame we passed, reaching the kernel's skb, gives it."""
    fd = bpf.load_program(_program(bpf.ldx(W, R0, R1, bpf.SKB_LEN), bpf.exit_insn()), "p2_test_len")
    try:
        assert [bpf.prog_test_run(fd, bytes(size)).retval for size in (64, 99, 1514)] == [64, 99, 1514]
    finally:
        os.close(fd)


@pytest.mark.root
def test_refused_program_raises_with_the_verifier_log() -> None:
    # Reading R0 before anything wrote it: the verifier says "R0 !read_ok".
    with pytest.raises(KernelError, match=r"(?s)loading program 'p2_test_bad'.*verifier log.*R0 !read_ok"):
        bpf.load_program(_program(bpf.exit_insn()), "p2_test_bad")


@pytest.mark.root
def test_packet_access_needs_a_bounds_check() -> None:
    # Load a byte of the frame without comparing against data_end: the verifier must refuse.
    code = _program(bpf.ldx(W, R2, R1, bpf.SKB_DATA), bpf.ldx(bpf.B, R0, R2, 0), bpf.exit_insn())
    with pytest.raises(KernelError, match="invalid access to packet"):
        bpf.load_program(code, "p2_test_unsafe")


@pytest.mark.root
def test_array_map_round_trip_and_clear() -> None:
    m = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 8, 4, "p2_test_map")
    try:
        m.update(2, struct.pack("=Q", 0xDEAD_BEEF_0000_0007))
        assert struct.unpack("=Q", m.lookup(2)) == (0xDEAD_BEEF_0000_0007,)
        assert m.lookup(1) == bytes(8)
        m.clear()
        assert m.lookup(2) == bytes(8)
        with pytest.raises(KernelError, match="reading key 4"):
            m.lookup(4)
        with pytest.raises(KernelError, match="expected 8 B"):
            m.update(0, b"\x01")
    finally:
        m.close()
    with pytest.raises(KernelError, match="is closed"):
        m.lookup(0)


@pytest.mark.root
def test_program_reads_a_map_through_its_fd() -> None:
    # R0 = map[0] as the verdict: proves ld_map_fd, the stack key and the helper call line up.
    m = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 8, 1, "p2_test_verdict")
    fd = None
    try:
        m.update(0, struct.pack("=Q", bpf.TC_ACT_SHOT))
        a = bpf.Assembler()
        a.emit(
            bpf.st(W, FP, -4, 0), bpf.ld_map_fd(R1, m.fd), bpf.mov64(R2, FP), bpf.alu64(bpf.ADD, R2, -4),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JNE, R0, 0, "found"), bpf.exit_insn(),
        )
        a.label("found")
        a.emit(bpf.ldx(DW, R0, R0, 0), bpf.exit_insn())
        fd = bpf.load_program(a.assemble(), "p2_test_lookup")
        assert bpf.prog_test_run(fd, bytes(64)).retval == bpf.TC_ACT_SHOT
        m.update(0, struct.pack("=Q", bpf.TC_ACT_OK))
        assert bpf.prog_test_run(fd, bytes(64)).retval == bpf.TC_ACT_OK
    finally:
        if fd is not None:
            os.close(fd)
        m.close()
