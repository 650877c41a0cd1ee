#!/usr/bin/env bash
# Provision the π² testbed VM (Ubuntu LTS, run as root by `vagrant up`/`vagrant provision`; idempotent).
#
# Installs the kernel's extra qdisc/action/classifier modules, Mininet, Open vSwitch, tcpdump and the project
# (editable, in a venv that also sees the apt-installed mininet module), then runs `pi2 doctor`.
#
# Environment:
#   PI2_SRC                 the checkout inside the VM (default /pi2, the Vagrantfile's synced folder)
#   PI2_VENV                the virtualenv (default /opt/pi2/venv); `pi2` is linked into /usr/local/bin
#   PI2_EXTRAS              pip extras, comma-separated (default dev; add train for torch)
#   PI2_KERNEL_RELEASE      kernel whose extra modules to install (default: the running one, uname -r)
#   PI2_PYTHON              interpreter the venv is made from (default python3)
#   PI2_PROVISION_DRY_RUN=1 print every step that would change the system instead of running it (read-only
#                           probes such as apt-cache still run); used by the test-suite on machines without a box
#   PI2_PROVISION_OFFLINE=1 run every step that needs no network, for real: no `apt-get update`; apt installs
#                           only packages already on the machine (--no-download) and names the others as
#                           skipped; pip installs with --no-index from what PI2_PYTHON's site-packages hold.
#                           CI runs it so, twice, as root in a user-mode-linux guest over a throw-away overlay
#                           of the host's root (tests/vagrant/test_vagrant.py)
#   PI2_OFFLINE_SITE        offline only: a site-packages directory the new venv sees too (a .pth file), where
#                           the requirements and the build backend are found (CI: its own venv's), since a
#                           fresh machine's PI2_PYTHON has none of them
set -euo pipefail

SRC=${PI2_SRC:-/pi2}
VENV=${PI2_VENV:-/opt/pi2/venv}
EXTRAS=${PI2_EXTRAS:-dev}
KERNEL_RELEASE=${PI2_KERNEL_RELEASE:-$(uname -r)}
PYTHON=${PI2_PYTHON:-python3}
DRY_RUN=${PI2_PROVISION_DRY_RUN:-0}
OFFLINE=${PI2_PROVISION_OFFLINE:-0}
OFFLINE_SITE=${PI2_OFFLINE_SITE:-}

APT_PACKAGES=(python3 python3-venv python3-pip iproute2 iputils-ping ethtool tcpdump mininet openvswitch-switch)
# Loaded now and at every boot: what the CI kernel lacks (docs: spec/kernel-notes.md). Cloud/virtual Ubuntu
# kernels ship sch_netem, sch_cbs, act_police, act_gact and cls_flower in linux-modules-extra-<release>.
MODULES=(sch_netem sch_cbs sch_etf sch_fq act_police act_gact cls_flower cls_matchall openvswitch)
MODULES_LOAD_CONF=/etc/modules-load.d/pi2.conf

step() { printf '==> %s\n' "$*"; }

# Run a command that changes the system, or only show it in a dry run.
run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# Write a file only if its content differs (keeps reruns quiet and idempotent).
write_file() {
    local path=$1 content=$2
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+ write %s: %s\n' "$path" "$(tr '\n' ' ' <<<"$content")"
    elif [[ ! -f "$path" || "$(cat "$path")" != "$content" ]]; then
        mkdir -p "$(dirname "$path")"  # /etc/modules-load.d comes with systemd, which a minimal root lacks
        printf '%s\n' "$content" >"$path"
    fi
}

if [[ "$DRY_RUN" != 1 && "$(id -u)" != 0 ]]; then
    echo "provision.sh: must run as root (vagrant runs it with sudo); or set PI2_PROVISION_DRY_RUN=1" >&2
    exit 1
fi
if [[ ! -f "$SRC/pyproject.toml" ]]; then
    echo "provision.sh: no pyproject.toml in PI2_SRC=$SRC; point PI2_SRC at the π² checkout" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

step "apt packages: ${APT_PACKAGES[*]}"
if [[ "$OFFLINE" == 1 ]]; then
    present=() absent=()
    for package in "${APT_PACKAGES[@]}"; do
        if installed "$package"; then present+=("$package"); else absent+=("$package"); fi
    done
    if ((${#absent[@]})); then
        echo "    offline: skipped ${absent[*]} (not installed; installing needs the network)"
    fi
    if ((${#present[@]})); then
        run apt-get install -y -q --no-download --no-install-recommends "${present[@]}"
    fi
else
    run apt-get update -q
    run apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

step "extra kernel modules for $KERNEL_RELEASE"
if apt-cache show "linux-modules-extra-$KERNEL_RELEASE" >/dev/null 2>&1; then
    if [[ "$OFFLINE" == 1 ]] && ! installed "linux-modules-extra-$KERNEL_RELEASE"; then
        echo "    offline: skipped linux-modules-extra-$KERNEL_RELEASE (installing needs the network)"
    else
        run apt-get install -y -q "linux-modules-extra-$KERNEL_RELEASE"
    fi
else
    echo "    no package linux-modules-extra-$KERNEL_RELEASE: this kernel carries its modules itself"
fi
write_file "$MODULES_LOAD_CONF" "$(printf '%s\n' "${MODULES[@]}")"
run modprobe -a "${MODULES[@]}"

step "Open vSwitch"
if [[ -d /run/systemd/system || "$DRY_RUN" == 1 ]]; then  # a dry run shows what the VM (systemd) runs
    run systemctl enable --now openvswitch-switch
else
    # No systemd (a container or chroot): the package's init script starts ovsdb-server and ovs-vswitchd
    # (and says so if they already run).
    run /etc/init.d/openvswitch-switch start
fi

step "project venv $VENV (extras: $EXTRAS)"
if [[ ! -x "$VENV/bin/python" ]]; then
    run mkdir -p "$(dirname "$VENV")"
    # --system-site-packages: the apt mininet package's python module stays importable. Offline, the venv gets
    # no pip of its own: ensurepip's bundled setuptools would shadow PI2_PYTHON's, which is what can build.
    if [[ "$OFFLINE" == 1 ]]; then
        run "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
    else
        run "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
fi
if [[ "$OFFLINE" == 1 ]]; then
    # Every requirement and the build backend must already be importable: from PI2_PYTHON's site-packages
    # or from PI2_OFFLINE_SITE.
    if [[ -n "$OFFLINE_SITE" ]]; then
        write_file "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/pi2-offline-site.pth" "$OFFLINE_SITE"
    fi
    run "$PYTHON" -m pip --python "$VENV/bin/python" install -q --no-index --no-build-isolation -e "$SRC[$EXTRAS]"
else
    run "$VENV/bin/pip" install -q --upgrade pip
    run "$VENV/bin/pip" install -q -e "$SRC[$EXTRAS]"
fi
if [[ "$(readlink /usr/local/bin/pi2 || true)" != "$VENV/bin/pi2" ]]; then
    run ln -sfn "$VENV/bin/pi2" /usr/local/bin/pi2
fi

step "pi2 doctor"
run /usr/local/bin/pi2 doctor
