"""Choose the Realisation a plan is compiled for: a named profile, or `auto` from a live probe."""

from __future__ import annotations

from testbed.errors import NeedsRootError
from testbed.plan.capabilities import Capabilities
from testbed.plan.compiler import Realisation
from testbed.plan.profiles import load_profile, select_profile


def realisation_for(requested: str, capabilities: Capabilities | None) -> Realisation:
    """`requested` is a profile name or path, or "auto" (which needs the probe's capabilities)."""
    if requested == "auto":
        if capabilities is None:
            raise NeedsRootError("--profile auto probes the kernel, which needs root: run with sudo, "
                                 "or name a profile (--profile shaper or --profile netem)")
        return Realisation.from_profile(select_profile(capabilities, "auto"))
    profile = load_profile(requested) if capabilities is None else select_profile(capabilities, requested)
    return Realisation.from_profile(profile)
