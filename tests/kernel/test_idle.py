import os
import struct

import pytest

from testbed.kernel.idle import CPU_LATENCY_QOS, idle_polling


def current_limit_us() -> int:
    with open(CPU_LATENCY_QOS, "rb") as qos:  # reading gives the kernel's current aggregate request
        return struct.unpack("=i", qos.read(4))[0]


def test_writes_a_zero_latency_request_and_lets_go(tmp_path):
    path = tmp_path / "qos"
    path.write_bytes(b"")
    with idle_polling(str(path)) as held:
        assert held
        assert path.read_bytes() == struct.pack("=i", 0)


def test_without_the_device_the_run_goes_on(tmp_path):
    with idle_polling(str(tmp_path / "missing")) as held:
        assert not held


def test_a_runs_own_error_is_not_chained_to_the_missing_device(tmp_path):
    with pytest.raises(ValueError) as raised:
        with idle_polling(str(tmp_path / "missing")):
            raise ValueError("the run failed")
    assert raised.value.__context__ is None


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(CPU_LATENCY_QOS), reason="this kernel has no PM QoS device")
def test_the_kernel_holds_the_request_only_while_the_file_is_open():
    before = current_limit_us()
    assert before > 0  # nobody else holds a 0 µs request (tuned, cyclictest) here
    with idle_polling() as held:
        assert held
        assert current_limit_us() == 0
    assert current_limit_us() == before
