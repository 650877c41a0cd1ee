"""Errors that teach: every failure a user can cause is a `TestbedError`.

`pi2` prints any `TestbedError` as one line (``pi2: error: ...``) and exits 2, so the
message must name the object, the bad value and what is accepted or how to fix it.
"""


class TestbedError(Exception):
    """Base of every error the testbed raises on purpose."""

    __test__ = False  # not a pytest test class despite the name


class ModelError(TestbedError):
    """A π² network (weights, K, constants, network file) is malformed."""


class ImportFormatError(ModelError):
    """A checkpoint or NIR graph cannot be read as a π² network."""


class DatasetError(TestbedError):
    """A data set is missing, corrupt or unknown."""


class TrainingError(TestbedError):
    """Training cannot run (e.g. torch missing, bad architecture string)."""


class PlanError(TestbedError):
    """A fabric plan is malformed or cannot be compiled."""


class ProfileError(TestbedError):
    """A tc profile is malformed or needs what the kernel lacks."""


class KernelError(TestbedError):
    """The kernel refused an operation (netlink error, missing module)."""


class NeedsRootError(KernelError):
    """The operation needs root (CAP_NET_ADMIN)."""


class GuestError(TestbedError):
    """The user-mode-linux guest could not boot or run a command."""


class CaptureError(TestbedError):
    """A packet capture (pcap file) is malformed or of an unsupported kind."""


class RegistryError(KernelError):
    """A run registry under /run/pi2 is unreadable, malformed or names objects not of its run."""


class RunBusyError(KernelError):
    """Another process's run is using the kernel fabric (two at once spoil each other's timing)."""


class OutputError(TestbedError):
    """A file or directory cannot be written where the user asked."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind like Ctrl-C (``finally`` blocks tear fabrics down), then exit
    128 + 15 = 143 as a process killed by SIGTERM would, so callers can tell it from Ctrl-C (130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
