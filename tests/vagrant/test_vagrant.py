"""vagrant/: the Vagrantfile validates and provision.sh is exercised as far as a machine without a box allows."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
PROVISION = VAGRANT_DIR / "provision.sh"
REPO = VAGRANT_DIR.parent

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
        "+ apt-get install -y -q --no-install-recommends python3 python3-venv python3-pip iproute2 iputils-ping "
        "ethtool tcpdump mininet openvswitch-switch",
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
