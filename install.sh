#!/usr/bin/env bash
# Install the π² testbed on a Debian/Ubuntu machine (as root): system packages, then the project
# into ./.venv. Idempotent. Usage: sudo ./install.sh [--dev]
#   --dev   also the test tools and the training extra (torch, CPU build)
set -euo pipefail
cd "$(dirname "$0")"

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (expected --dev)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo ./install.sh): it installs Debian packages and the testbed builds kernel objects" >&2
  exit 2
fi

# What the commands run: iproute2 (ip, tc), tcpdump, Mininet (mn, mnexec) with bridge-utils (its
# LinuxBridge switch runs brctl, and --no-install-recommends leaves it out), user-mode Linux (a guest
# kernel with netem) with kmod (the guest's init runs modprobe), Fashion-MNIST, and for --cluster
# the ssh client, sudo (Mininet's cluster edition runs every remote command through them) and ping
# (the inter-host latency measured at build time). --dev adds what
# only the tests run: Vagrant with a provider (`vagrant validate` needs one), busybox (ping in the
# guest tests), openssh-server (the emulated cluster hosts' sshd, testbed.cluster.emulated), and what vagrant/provision.sh installs, since its test provisions offline in a guest
# over this machine's root, and debootstrap (.ci/fresh-root, the README's commands in a fresh Debian root).
# tests/test_install.py finds every program the code and tests run and
# fails when its package is not installed here.
# Skip apt entirely when everything is already there.
APT_PACKAGES=(iproute2 tcpdump mininet bridge-utils user-mode-linux kmod dataset-fashion-mnist python3-venv python3-pip
              openssh-client sudo iputils-ping)
[ "$DEV" = 1 ] && APT_PACKAGES+=(vagrant vagrant-libvirt busybox iputils-ping ethtool openvswitch-switch debootstrap openssh-server)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
EXTRAS="mininet"
[ "$DEV" = 1 ] && EXTRAS="mininet,dev,train,nir"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS}]"
echo "install.sh: done; run: sudo .venv/bin/pi2 --help"
