"""Every file the testbed reads, damaged every way we could think of, and bad option values: each
ends in one line naming the input (exit 2, no traceback) and leaves nothing behind on disk.

Inputs: network .npz, plan .json, tc profile .yaml, pcap, PyTorch .pt, NIR .nir, a cached data
set (mnist.npz under $PI2_CACHE) and run registries (tests/kernel/test_names.py has the
registry's own cases; here `pi2 down`/`pi2 clean` read them). Each is truncated, replaced by
random bytes, emptied, given wrong types and given hostile sizes. Commands run in-process
through `testbed.cli.main`, as the console script does.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from testbed.cli import main
from testbed.model.netfile import META_KEY, load_network, save_network
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network

ROOT = Path(__file__).resolve().parents[2]
NETWORK = ROOT / "testbed" / "networks" / "digits-mlp.npz"
PROFILE = ROOT / "testbed" / "tc_profiles" / "shaper.yaml"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`pi2 ARGS` as the console script runs it: (exit status, stderr)."""
    old_argv, old_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["pi2", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        signal.signal(signal.SIGTERM, old_term)
    return code, capsys.readouterr().err


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


def assert_one_line(code: int, err: str, names: tuple[str, ...]) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines and "Traceback" not in err, err
    last = lines[-1]
    assert last.startswith(("pi2: error: ", "Error: ")), err
    assert any(name in last for name in names), f"{last!r} names none of {names}"


# ---------------------------------------------------------------- damage every file type shares

def generic_damage(valid: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(18)
    return {
        "empty": b"",
        "truncated to half": valid[: len(valid) // 2],
        "truncated to 10 bytes": valid[:10],
        "last byte missing": valid[:-1],
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random bytes, same length": rng.integers(0, 256, len(valid), dtype=np.uint8).tobytes(),
        "text": b"hello, world\n",
        "nul bytes": bytes(1024),
        "flipped bytes": bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(valid)),
    }


# ---------------------------------------------------------------- network files (.npz)

def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _valid_arrays() -> dict[str, np.ndarray]:
    with np.load(NETWORK, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _with(**changes: np.ndarray | None) -> bytes:
    arrays = _valid_arrays()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return _npz(arrays)


def _meta(edit: Callable[[dict], None]) -> bytes:
    arrays = _valid_arrays()
    meta = json.loads(bytes(arrays[META_KEY]).decode())
    edit(meta)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return _npz(arrays)


def _hostile_header(shape: tuple[int, ...]) -> bytes:
    """An .npz whose first weight's .npy header declares `shape` but holds 16 bytes."""
    arrays = _valid_arrays()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for key, value in arrays.items():
            if key == "layer0.weight":
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
                zf.writestr(key + ".npy", header.getvalue() + bytes(16))
            else:
                buf = io.BytesIO()
                np.save(buf, value)
                zf.writestr(key + ".npy", buf.getvalue())
    return out.getvalue()


def network_cases() -> dict[str, bytes]:
    valid = NETWORK.read_bytes()
    cases = {f"net: {k}": v for k, v in generic_damage(valid).items()}
    w0 = _valid_arrays()["layer0.weight"]
    cases.update({
        "net: no metadata": _with(**{META_KEY: None}),
        "net: no weights": _with(layer0__weight=None),
        "net: metadata not JSON": _with(**{META_KEY: np.frombuffer(b"{not json", dtype=np.uint8)}),
        "net: metadata a list": _with(**{META_KEY: np.frombuffer(b"[1, 2]", dtype=np.uint8)}),
        "net: weights NaN": _with(layer0__weight=np.full_like(w0, np.nan)),
        "net: weights infinite": _with(layer0__weight=np.full_like(w0, np.inf)),
        "net: weights strings": _with(layer0__weight=np.array(["a", "b"])),
        "net: weights 3-d": _with(layer0__weight=w0[None]),
        "net: weights wrong shape": _with(layer0__weight=w0[:10]),
        "net: weights empty": _with(layer0__weight=np.zeros((0, 16), dtype=np.float32)),
        "net: k a string": _meta(lambda m: m.update(k="24,8")),
        "net: k zero": _meta(lambda m: m.update(k=[0, 8])),
        "net: k huge": _meta(lambda m: m.update(k=[10**12, 8])),
        "net: input shape huge": _meta(lambda m: m.update(input_shape=[10**9])),
        "net: input shape negative": _meta(lambda m: m.update(input_shape=[-64])),
        "net: version unknown": _meta(lambda m: m.update(version=99)),
        "net: header declares 10^12 elements": _hostile_header((10**12,)),
        "net: header declares 10^6 × 10^6": _hostile_header((10**6, 10**6)),
        "net: pickled object array": _with(layer0__weight=np.array([{"a": 1}], dtype=object)),
    })
    return cases


NETWORK_CASES = network_cases()


@pytest.mark.parametrize("content", NETWORK_CASES.values(), ids=NETWORK_CASES.keys())
@pytest.mark.parametrize("command", [["show"], ["eval", "--limit", "5"]], ids=["show", "eval"])
def test_bad_network_file(tmp_path, capsys, monkeypatch, content, command) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "net.npz"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli([command[0], str(path), *command[1:]], capsys)
    assert_one_line(code, err, (str(path),))
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- plans (.json)

def _plan_text() -> str:
    net = Pi2Network((DenseLayer(np.eye(2), 1),), (2,))
    return json.dumps(compile_network(net, Realisation("shaper", "htb-primer"), 1000.0, np.zeros((1, 2))).to_dict())


PLAN_TEXT = _plan_text()


def _plan_edit(text: str, edit: Callable[[dict], object]) -> bytes:
    raw = json.loads(text)
    edit(raw)
    return json.dumps(raw).encode()


def plan_cases(text: str) -> dict[str, bytes]:
    cases = {f"plan: {k}": v for k, v in generic_damage(text.encode()).items()}
    port = lambda d: d["layers"][0]["ports"][0]  # noqa: E731
    cases.update({
        "plan: a list": b"[]",
        "plan: null": b"null",
        "plan: a string": b'"plan"',
        "plan: nested 100000 deep": b"[" * 100000 + b"]" * 100000,
        "plan: window Infinity": text.replace('"window_us": ', '"window_us": Infinity, "x": ').encode(),
        "plan: window NaN": _plan_edit(text, lambda d: d["layers"][0].update(window_us="NaN")),
        "plan: window 1e999": text.replace('"tau_us": 1000.0', '"tau_us": 1e999').encode(),
        "plan: delay_tc unknown key": _plan_edit(text, lambda d: port(d)["delay_tc"].update(bogus=1)),
        "plan: 600 ports": _plan_edit(text, lambda d: d["layers"][0].update(ports=d["layers"][0]["ports"] * 300)),
        "plan: 10^5 layers": _plan_edit(text, lambda d: d.update(layers=d["layers"] * 100000)),
        "plan: 10^6 synapses on a port": _plan_edit(text, lambda d: port(d).update(synapses=port(d)["synapses"] * 10**6)),
        "plan: k a float": _plan_edit(text, lambda d: port(d).update(k=1.5)),
        "plan: sign 7": _plan_edit(text, lambda d: port(d).update(sign=7)),
        "plan: interface name with a slash": _plan_edit(text, lambda d: port(d).update(host_if="../x")),
        "plan: tc parameter a string": _plan_edit(text, lambda d: d["layers"][0]["line_tc"]["qdiscs"][0].update(
            params={"default_class": "zero"})),
        "plan: timing missing": _plan_edit(text, lambda d: d.pop("timing")),
        "plan: version 1": _plan_edit(text, lambda d: d.update(version=1)),
    })
    return cases


PLAN_CASES = plan_cases(PLAN_TEXT)


@pytest.mark.parametrize("content", PLAN_CASES.values(), ids=PLAN_CASES.keys())
def test_bad_plan_file(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli(["simulate", str(path)], capsys)
    assert_one_line(code, err, (str(path),))
    assert files_under(tmp_path) == before


def test_a_network_given_to_simulate_says_compile_it_first(tmp_path, capsys) -> None:
    code, err = run_cli(["simulate", str(NETWORK)], capsys)
    assert_one_line(code, err, (str(NETWORK),))
    assert "compile it first" in err


# ---------------------------------------------------------------- tc profiles (.yaml)

def profile_cases() -> dict[str, bytes]:
    valid = PROFILE.read_text()
    cases = {f"profile: {k}": v for k, v in generic_damage(valid.encode()).items()
             if k != "last byte missing"}  # YAML without its final newline is still the same profile
    cases.update({
        "profile: a list": b"[]\n",
        "profile: a number": b"3\n",
        "profile: not utf-8": b"\xff\xfe\x00name: shaper\n",
        "profile: python object tag": b"!!python/object/apply:os.system ['touch pwned']\n",
        "profile: unknown key": (valid + "\nbogus: 1\n").encode(),
        "profile: billion laughs": (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                                    b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                                    b"e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"),
        "profile: deep nesting": b"[" * 20000 + b"]" * 20000,
        "profile: number a string": valid.replace("1514", "'big'", 1).encode(),
        "profile: huge number": valid.replace("1514", "1" + "0" * 400, 1).encode(),
    })
    return cases


PROFILE_CASES = profile_cases()


@pytest.mark.parametrize("content", PROFILE_CASES.values(), ids=PROFILE_CASES.keys())
def test_bad_profile_file(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "shaper.yaml"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli(["compile", str(NETWORK), "--profile", str(path), "-o", str(tmp_path / "p.json")], capsys)
    assert_one_line(code, err, (str(path),))
    assert files_under(tmp_path) == before and not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- pcaps

def _pcap() -> bytes:
    from testbed.plan.wire import SpikeHeader
    from testbed.traffic.packets import spike_frame
    from testbed.traffic.pcap import write_pcap

    frames = [spike_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2",
                          SpikeHeader(layer=0, source=i, sign=0, sample=1, seq=i)) for i in range(4)]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"i18-{os.getpid()}.pcap"
    write_pcap(out, list(range(4)), frames)
    data = out.read_bytes()
    out.unlink()
    return data


def pcap_cases() -> dict[str, bytes]:
    valid = _pcap()
    cases = {f"pcap: {k}": v for k, v in generic_damage(valid).items()}
    header, first = valid[:24], valid[24:]
    cases.update({
        "pcap: pcapng": bytes.fromhex("0a0d0d0a") + bytes(60),
        "pcap: link type raw IP": header[:20] + struct.pack("<I", 101) + first,
        "pcap: record claims 4 GiB": header + struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 0xFFFFFFFF) + first[16:],
        "pcap: record longer than its frame": header + first[:8] + struct.pack("<II", 60, 9000) + first[16:],
        "pcap: record cut short": valid[:-7],
        "pcap: snaplen zero, frames cut": header[:16] + struct.pack("<I", 0) + header[20:] + first,
    })
    return cases


PCAP_CASES = pcap_cases()


@pytest.mark.parametrize("content", PCAP_CASES.values(), ids=PCAP_CASES.keys())
def test_bad_pcap(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.pcap"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli(["trace", str(path), "--raster", str(tmp_path / "r.png")], capsys)
    if code == 0:  # damage that still leaves a readable capture (e.g. flipped payload bytes) is fine
        assert "Traceback" not in err
        return
    assert_one_line(code, err, (str(path),))
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- PyTorch checkpoints (.pt)

def _pickle_op(value: object) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=2)[2:-1]  # without PROTO and STOP


def _tensor_pt(size: tuple[int, ...], stride: tuple[int, ...], numel: int = 4, storage_bytes: int | None = None) -> bytes:
    """A torch-format zip of one FloatStorage tensor with the given geometry, written by hand."""
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    persistent = b"(" + _pickle_op("storage") + glob("torch", "FloatStorage") + _pickle_op("0") + \
        _pickle_op("cpu") + _pickle_op(numel) + b"tQ"
    tensor = glob("torch._utils", "_rebuild_tensor_v2") + b"(" + persistent + _pickle_op(0) + \
        _pickle_op(size) + _pickle_op(stride) + _pickle_op(False) + glob("collections", "OrderedDict") + b")R" + b"tR"
    body = b"\x80\x02" + glob("collections", "OrderedDict") + b")R" + _pickle_op("0.weight") + tensor + b"s."
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(4 * numel if storage_bytes is None else storage_bytes))
    return out.getvalue()


def _code_pt(marker: str) -> bytes:
    body = b"\x80\x02cos\nsystem\n(" + _pickle_op(f"touch {marker}") + b"tR."
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", body)
    return out.getvalue()


def _valid_pt() -> bytes:
    import torch
    state = {"0.weight": torch.zeros(16, 64), "0.bias": torch.zeros(16), "2.weight": torch.zeros(10, 16),
             "2.bias": torch.zeros(10)}
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


MARKER = "code-ran"  # the pickle's command would create this in the working directory


def pt_cases() -> dict[str, bytes]:
    cases = {f"pt: {k}": v for k, v in generic_damage(_valid_pt()).items()}
    cases.update({
        "pt: code in the pickle": _code_pt(MARKER),
        "pt: stride 0, 10^12 elements": _tensor_pt((10**6, 10**6), (0, 0)),
        "pt: stride 0, 10^9 × 64": _tensor_pt((10**9, 64), (0, 1), numel=64),
        "pt: negative size": _tensor_pt((-1, 4), (4, 1)),
        "pt: reads past its storage": _tensor_pt((4, 4), (4, 1)),
        "pt: storage declares 10^12 elements": _tensor_pt((2, 2), (2, 1), numel=10**12, storage_bytes=16),
        "pt: a zip without data.pkl": _npz({"a": np.zeros(2)}),
    })
    return cases


PT_CASES = pt_cases()


@pytest.mark.parametrize("content", PT_CASES.values(), ids=PT_CASES.keys())
def test_bad_torch_checkpoint(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "teacher.pt"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli(["import", str(path), "--k", "24,8", "--dataset", "digits", "-o", str(tmp_path / "n.npz")],
                        capsys)
    assert_one_line(code, err, (str(path), path.name))
    assert files_under(tmp_path) == before and not (tmp_path / MARKER).exists()


# ---------------------------------------------------------------- NIR graphs (.nir)

def _valid_nir() -> bytes:
    import tempfile

    from testbed.model.nir_io import export_nir

    with tempfile.TemporaryDirectory() as folder:
        path = export_nir(load_network(NETWORK), Path(folder) / "net.nir")
        return path.read_bytes()


def nir_cases() -> dict[str, bytes]:
    cases = {f"nir: {k}": v for k, v in generic_damage(_valid_nir()).items()}
    cases["nir: a network .npz renamed"] = NETWORK.read_bytes()
    return cases


NIR_CASES = nir_cases()


@pytest.mark.parametrize("content", NIR_CASES.values(), ids=NIR_CASES.keys())
def test_bad_nir_graph(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "net.nir"
    path.write_bytes(content)
    before = files_under(tmp_path)
    code, err = run_cli(["import", str(path), "--k", "24,8", "--dataset", "digits", "-o", str(tmp_path / "n.npz")],
                        capsys)
    assert_one_line(code, err, (str(path), path.name))
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- a cached data set

def dataset_cases() -> dict[str, bytes]:
    valid = _npz({"x_train": np.zeros((4, 28, 28), np.uint8), "y_train": np.zeros(4, np.uint8),
                  "x_test": np.zeros((4, 28, 28), np.uint8), "y_test": np.zeros(4, np.uint8),
                  "sha256": np.array("0" * 64)})
    cases = {f"mnist cache: {k}": v for k, v in generic_damage(valid).items()}
    cases.update({
        "mnist cache: a key missing": _npz({"x_train": np.zeros((4, 28, 28), np.uint8)}),
        "mnist cache: images the wrong shape": _npz({"x_train": np.zeros((4, 5), np.uint8), "y_train": np.zeros(4),
                                                     "x_test": np.zeros((4, 5), np.uint8), "y_test": np.zeros(4),
                                                     "sha256": np.array("0" * 64)}),
        "mnist cache: labels and images disagree": _npz({"x_train": np.zeros((4, 28, 28), np.uint8),
                                                         "y_train": np.zeros(3), "x_test": np.zeros((4, 28, 28)),
                                                         "y_test": np.zeros(4), "sha256": np.array("0" * 64)}),
    })
    return cases


DATASET_CASES = dataset_cases()


@pytest.mark.parametrize("content", DATASET_CASES.values(), ids=DATASET_CASES.keys())
def test_bad_cached_dataset(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PI2_CACHE", str(tmp_path))
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    net = tmp_path / "net.npz"
    save_network(Pi2Network((DenseLayer(np.zeros((784, 10), np.float32), 1),), (28, 28),
                            provenance={"dataset": {"name": "mnist", "scale": 1 / 255, "offset": 0.0}}), net)
    before = files_under(tmp_path)
    code, err = run_cli(["eval", str(net), "--limit", "2"], capsys)
    assert_one_line(code, err, (str(path),))
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- options

BAD_OPTIONS = {
    "compile --tau 0": (["compile", str(NETWORK), "--profile", "shaper", "--tau", "0"], "--tau"),
    "compile --tau abc": (["compile", str(NETWORK), "--profile", "shaper", "--tau", "abc"], "--tau"),
    "compile --tau 1e999ms": (["compile", str(NETWORK), "--profile", "shaper", "--tau", "1e999ms"], "--tau"),
    "compile --tau -1ms": (["compile", str(NETWORK), "--profile", "shaper", "--tau", "-1ms"], "--tau"),
    "compile --relay -1ms": (["compile", str(NETWORK), "--profile", "shaper", "--relay", "-1ms"], "--relay"),
    "compile --prune -1": (["compile", str(NETWORK), "--profile", "shaper", "--prune", "-1"], "--prune"),
    "compile --lead -1": (["compile", str(NETWORK), "--profile", "shaper", "--lead", "-1"], "--lead"),
    "compile --lead nan": (["compile", str(NETWORK), "--profile", "shaper", "--lead", "nan"], "--lead"),
    "compile --loss 1": (["compile", str(NETWORK), "--profile", "shaper", "--loss", "1"], "--loss"),
    "compile --loss 0.3": (["compile", str(NETWORK), "--profile", "shaper", "--loss", "0.3"], "loss"),
    "compile --calibration 0": (["compile", str(NETWORK), "--profile", "shaper", "--calibration", "0"], "--calibration"),
    "compile --profile nonexistent": (["compile", str(NETWORK), "--profile", "nonexistent"], "nonexistent"),
    "compile --dataset nonexistent": (["compile", str(NETWORK), "--profile", "shaper", "--dataset", "nope"], "nope"),
    "compile -o into a missing directory": (["compile", str(NETWORK), "--profile", "shaper", "-o", "missing/dir/x.json"],
                                            "missing/dir"),
    "compile -o a directory": (["compile", str(NETWORK), "--profile", "shaper", "-o", "."], "-o"),
    "simulate --limit 0": (["simulate", "PLAN", "--limit", "0"], "--limit"),
    "simulate --packet-cost-us -1": (["simulate", "PLAN", "--packet-cost-us", "-1"], "--packet-cost-us"),
    "eval --limit 0": (["eval", str(NETWORK), "--limit", "0"], "--limit"),
    "eval --dataset nonexistent": (["eval", str(NETWORK), "--dataset", "nope"], "nope"),
    "compile --dataset fashion (28×28 for a 64-input network)": (
        ["compile", str(NETWORK), "--profile", "shaper", "--dataset", "fashion", "--calibration", "5"], "fashion"),
    "compile a network of 10^6 inputs": (["compile", "HUGE", "--profile", "shaper", "--dataset", "digits"], "(64,)"),
    "infer --dataset fashion --limit 5": (["infer", "--dataset", "fashion", "--limit", "5", "--tau", "6ms",
                                           "--profile", "shaper"], "fashion"),
    "infer --limit 0": (["infer", "--limit", "0"], "--limit"),
    "infer --inject-cpu 99": (["infer", "--inject-cpu", "99"], "--inject-cpu"),
    "infer --plots /dev/null/x": (["infer", "--plots", "/dev/null/x"], "--plots"),
    "infer --pcap under a file": (["infer", "--pcap", "plan.json/out"], "--pcap"),
    "infer PLAN --tau 2ms (a compiled plan)": (["infer", "PLAN", "--tau", "2ms"], "--tau"),
    "infer PLAN --profile netem --loss 0.1": (["infer", "PLAN", "--profile", "netem", "--loss", "0.1"], "--profile"),
    "up --fabric-cpus a": (["up", "PLAN", "--fabric-cpus", "a"], "--fabric-cpus"),
    "up --backend nonsense": (["up", "PLAN", "--backend", "nonsense"], "--backend"),
    "train --k 0,1": (["train", "--dataset", "digits", "--arch", "mlp:64-16-10", "--k", "0,1", "-o", "n.npz"], "K '0,1'"),
    "train --arch nonsense": (["train", "--dataset", "digits", "--arch", "nonsense", "--k", "1,1", "-o", "n.npz"],
                              "nonsense"),
    "train -o into a missing directory": (["train", "--dataset", "digits", "--arch", "mlp:64-16-10", "--k", "24,8",
                                           "-o", "missing/n.npz"], "missing"),
    "import --k abc": (["import", str(NETWORK), "--k", "abc", "-o", "n.npz"], "--k"),
    "trace --raster into a missing directory": (["trace", "PCAP", "--raster", "missing/r.png"], "missing"),
    "export --format nonsense": (["export", str(NETWORK), "--format", "nonsense", "-o", "x"], "--format"),
    "down a bad run id": (["down", "NOT-AN-ID"], "NOT-AN-ID"),
    "eval --jitter nan": (["eval", str(NETWORK), "--jitter", "nan"], "--jitter"),
    "eval --event-loss inf": (["eval", str(NETWORK), "--event-loss", "inf"], "--event-loss"),
    "train --lr inf": (["train", "--dataset", "digits", "--arch", "mlp:64-16-10", "--k", "24,8", "--lr", "inf",
                        "-o", "n.npz"], "--lr"),
    "train --finetune-lr 0": (["train", "--dataset", "digits", "--arch", "mlp:64-16-10", "--k", "24,8", "--bits", "4",
                               "--finetune-lr", "0", "-o", "n.npz"], "--finetune-lr"),
    "compile --loss nan": (["compile", str(NETWORK), "--profile", "shaper", "--loss", "nan"], "--loss"),
    "energy --workload nonsense": (["energy", "--workload", "nonsense"], "nonsense"),
    "place --cluster not starting with localhost": (["place", "PLAN", "--cluster", "server1,localhost"], "--cluster"),
    "place --cluster emulated:0": (["place", "PLAN", "--cluster", "emulated:0"], "emulated:N"),
    "infer --cluster with a bad host name": (["infer", "--cluster", "localhost,bad/name"], "--cluster"),
}


@pytest.mark.parametrize("args, names", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_option_value(tmp_path, capsys, monkeypatch, args, names) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text(PLAN_TEXT)
    (tmp_path / "run.pcap").write_bytes(_pcap())
    if "HUGE" in args:
        save_network(Pi2Network((DenseLayer(np.ones((10**6, 2), np.float32), 1),), (10**6,)), tmp_path / "huge.npz")
    args = [{"PLAN": "plan.json", "PCAP": "run.pcap", "HUGE": "huge.npz"}.get(a, a) for a in args]
    before = files_under(tmp_path)
    code, err = run_cli(args, capsys)
    assert_one_line(code, err, (names,))
    assert files_under(tmp_path) == before


def test_the_option_catalogue_covers_every_command() -> None:
    from testbed.cli import pi2

    tried = {args[0] for args, _ in BAD_OPTIONS.values()}
    readers = {"show", "simulate", "trace", "import", "eval"} | tried
    untried = set(pi2.commands) - readers - {"status", "clean", "doctor", "guest"}
    assert untried == set(), f"commands without bad-input cases: {untried}"
