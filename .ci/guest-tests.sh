#!/bin/sh
# CI: run the kernel test-suite once inside a user-mode-linux guest, whose kernel has netem, cbs, police, gact,
# flower and openvswitch (issue 6). The guest sees this checkout and its virtualenv read-only at the same paths:
# bytecode and pytest's cache are switched off, tmp_path lands on the guest's tmpfs /tmp.
# PI2_PROFILE tells the kernel tests which tc profile to exercise; pi2 guest forwards every PI2_* variable.
# Exit status: pytest's (0 = all passed), or 2 if the guest itself failed (boot, module, timeout, leftovers).
set -eu
cd "$(dirname "$0")/.."
export PI2_PROFILE="${PI2_PROFILE:-netem}"
exec pi2 guest --timeout "${PI2_GUEST_TIMEOUT_S:-1800}" -- \
    python -m pytest tests/kernel -m root -q -p no:cacheprovider "$@"
