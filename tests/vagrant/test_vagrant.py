"""vagrant/: the Vagrantfile validates and provision.sh is exercised as far as a machine without a box allows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
PROVISION = VAGRANT_DIR / "provision.sh"
REPO = VAGRANT_DIR.parent

APT_PACKAGES = "python3 python3-venv python3-pip iproute2 iputils-ping ethtool tcpdump mininet openvswitch-switch"
needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None, reason="needs Debian package vagrant")


def _vagrant_validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # VAGRANT_HOME and the .vagrant dotfile dir in tmp_path: nothing is written to the user's ~/.vagrant.d or the
    # checkout, and with no box in that empty home nothing can be reused; validate itself never fetches a box.
    full_env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1", **env}
    return subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=full_env, capture_output=True, text=True,
                          timeout=120)


@needs_vagrant
def test_vagrantfile_validates_for_every_provider(tmp_path: Path) -> None:
    result = _vagrant_validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    assert not (VAGRANT_DIR / ".vagrant").exists()
    assert not (tmp_path / "home" / "boxes").exists() or not any((tmp_path / "home" / "boxes").iterdir())


@needs_vagrant
def test_vagrantfile_rejects_a_non_numeric_cpu_count(tmp_path: Path) -> None:
    result = _vagrant_validate(tmp_path, PI2_VAGRANT_CPUS="many")
    assert result.returncode != 0
    assert "many" in result.stdout + result.stderr


def test_provision_script_parses() -> None:
    subprocess.run(["bash", "-n", str(PROVISION)], check=True, timeout=30)


def _dry_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PI2_PROVISION_DRY_RUN": "1", "PI2_SRC": str(REPO),
                "PI2_VENV": str(tmp_path / "venv"), "PI2_KERNEL_RELEASE": "6.8.0-1-p2test", **env}
    return subprocess.run(["bash", str(PROVISION)], env=full_env, capture_output=True, text=True, timeout=60)


def test_provision_dry_run_shows_every_step_in_order_and_changes_nothing(tmp_path: Path) -> None:
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected_in_order = [
        "+ apt-get update -q",
        f"+ apt-get install -y -q --no-install-recommends {APT_PACKAGES}",
        "==> extra kernel modules for 6.8.0-1-p2test",
        "+ write /etc/modules-load.d/pi2.conf: sch_netem sch_cbs sch_etf sch_fq act_police act_gact cls_flower "
        "cls_matchall openvswitch ",
        "+ modprobe -a sch_netem sch_cbs sch_etf sch_fq act_police act_gact cls_flower cls_matchall openvswitch",
        "+ systemctl enable --now openvswitch-switch",
        f"+ python3 -m venv --system-site-packages {tmp_path / 'venv'}",
        f"+ {tmp_path / 'venv'}/bin/pip install -q -e {REPO}[dev]",
        f"+ ln -sfn {tmp_path / 'venv'}/bin/pi2 /usr/local/bin/pi2",
        "+ /usr/local/bin/pi2 doctor",
    ]
    positions = [lines.index(line) for line in expected_in_order]
    assert positions == sorted(positions)
    assert not (tmp_path / "venv").exists()


def test_provision_dry_run_with_an_existing_venv_does_not_recreate_it(tmp_path: Path) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    result = _dry_run(tmp_path, PI2_EXTRAS="dev,train")
    assert result.returncode == 0, result.stderr
    assert "python3 -m venv" not in result.stdout
    assert f"install -q -e {REPO}[dev,train]" in result.stdout


def test_provision_refuses_a_source_dir_without_the_project(tmp_path: Path) -> None:
    result = _dry_run(tmp_path, PI2_SRC=str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"no pyproject.toml in PI2_SRC={tmp_path}" in result.stderr


# provision.sh for real, offline, as root: in a user-mode-linux guest, chrooted into an overlay whose lower
# layer is the host's root (read-only hostfs) and whose upper layer is guest tmpfs, so apt, dpkg, modprobe,
# the venv and /usr/local/bin all change only the throw-away overlay. /lib/modules/<UML release> points at the
# UML kernel's modules, so provision.sh's plain `modprobe -a` loads them. Run twice: the second run must succeed
# and change nothing that the first one made.
_OVERLAY_RUN = r"""
M=/run/p2prov
mkdir -p $M/upper $M/work $M/root
mount -t overlay overlay -o lowerdir=/,upperdir=$M/upper,workdir=$M/work $M/root || exit 90
for d in proc sys dev; do mount --rbind /$d $M/root/$d || exit 91; done
mount -t tmpfs tmpfs $M/root/run && mount -t tmpfs tmpfs $M/root/tmp || exit 92
# A checkout under /tmp or /run (a CI clone) is hidden by those tmpfs mounts: bind it back.
case "$SRC" in /tmp/*|/run/*) mkdir -p "$M/root$SRC" && mount --bind "$SRC" "$M/root$SRC" || exit 93;; esac
mkdir -p $M/root/lib/modules && ln -sfn /usr/lib/uml/modules/$(uname -r) $M/root/lib/modules/$(uname -r)
in_root() { chroot $M/root env PI2_PROVISION_OFFLINE=1 PI2_OFFLINE_SITE="$SITE" PI2_SRC="$SRC" PI2_VENV=/opt/pi2/venv PI2_PYTHON="$PY" "$@"; }
stamp() { in_root stat -c '%n %i %Y' /etc/modules-load.d/pi2.conf /opt/pi2/venv/pyvenv.cfg /usr/local/bin/pi2; }
for n in 1 2; do
  echo "=== run $n"
  in_root bash "$SRC/vagrant/provision.sh" 2>&1
  echo "=== status $n $?"
  echo "=== stamp $n $(stamp | tr '\n' ' ')"
done
echo "=== modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "=== conf $(in_root cat /etc/modules-load.d/pi2.conf | tr '\n' ' ')"
echo "=== link $(in_root readlink /usr/local/bin/pi2)"
"""


def _installed(package: str) -> bool:
    query = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return query.stdout == "install ok installed"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PI2_IN_GUEST") == "1", reason="already inside a guest: no nested UML")
def test_provision_runs_offline_twice_as_root_in_a_guest_overlay() -> None:
    from testbed.errors import GuestError
    from testbed.kernel.guest import DEFAULT_MODULES, GuestSpec, run_in_guest

    host_files = [Path("/etc/modules-load.d/pi2.conf"), Path("/opt/pi2")]
    before = [p.exists() for p in host_files]
    spec = GuestSpec(command=("sh", "-c", _OVERLAY_RUN), cwd=str(REPO), timeout_s=900,
                     env=(("SRC", str(REPO)), ("PY", os.path.realpath(sys.executable)),
                          ("SITE", sysconfig.get_paths()["purelib"])),
                     modules=DEFAULT_MODULES + ("overlay",))
    try:
        result = run_in_guest(spec)
    except GuestError as exc:
        if "not found on PATH" in str(exc):
            pytest.skip(str(exc))
        raise
    out = result.stdout
    tail = out[-3000:]
    sections = dict(line[4:].split(" ", 1) for line in out.splitlines() if line.startswith("=== ") and " " in line[4:])
    assert "=== status 1 0" in out and "=== status 2 0" in out, tail
    first, second = out.split("=== run ")[1:]
    packages = APT_PACKAGES.split()
    absent = [p for p in packages if not _installed(p)]
    for text in (first, second):
        # Every step ran for real (no dry-run "+ " lines): apt on what is here, modules, OVS, venv, pip, doctor.
        assert "\n+ " not in text
        for package in packages:
            assert (f"{package} is already the newest version" in text) == (package not in absent), package
        if absent:
            assert f"offline: skipped {' '.join(absent)} (not installed; installing needs the network)" in text
        assert "profile full (rank 3): fits" in text, tail  # pi2 doctor from the provisioned venv
    assert "ovs-vswitchd is already running" in second  # the first run started Open vSwitch
    # The second run rewrote nothing the first made: same inode and mtime of the module list, the venv, the link.
    stamps = [line.split(" ", 3)[3] for line in out.splitlines() if line.startswith("=== stamp ")]
    assert len(stamps) == 2 and stamps[0] == stamps[1] and stamps[0].count("/") >= 3, tail
    modules = set(sections["modules"].split())
    assert {"sch_netem", "sch_cbs", "sch_etf", "sch_fq", "act_police", "act_gact", "cls_flower", "cls_matchall",
            "openvswitch"} <= modules
    assert sections["conf"].split() == ["sch_netem", "sch_cbs", "sch_etf", "sch_fq", "act_police", "act_gact",
                                        "cls_flower", "cls_matchall", "openvswitch"]
    assert sections["link"] == "/opt/pi2/venv/bin/pi2"
    assert [p.exists() for p in host_files] == before  # the host itself is untouched
    assert not Path(f"/proc/{result.uml_pid}").exists()
