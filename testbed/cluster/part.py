"""The switch side of one placed part, built on its own host: ``python -m testbed.cluster.part SPEC``.

The cluster backend (testbed.fabric.cluster_backend) runs this in the shell Mininet's cluster
edition keeps on the part's host, inside the part's switch namespace, because a delay tree or a
line tree is tc objects plus bpf programs (testbed.fabric.ports): what ``ip``/``tc``
commands over ssh could not load. SPEC is a JSON file (the run directory; copied to a real
server first) naming the plan file, the part's bridges, the links to bring up, each port's
switch end, and the injector links' switch ends that carry a layer's shared delay lines. It
prints one line: ``pi2-part: ok`` or ``pi2-part: error: …``, and exits; the attached filters
keep the programs loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.fabric.ports import program_delay_trees, program_line_trees
from testbed.kernel import netns
from testbed.kernel.links import make_hub
from testbed.plan.fabric_plan import load_plan

HERE = "/proc/self/ns/net"  # this process's namespace, as a path: sysfs (RPS) is mounted for it
OK = "pi2-part: ok"


def build_part(spec: dict[str, Any]) -> None:
    plan = load_plan(spec["plan"])
    ports = [(plan.layers[layer].ports[index], name) for layer, index, name in spec["ports"]]
    for name in [*spec["bridges"], *spec["up"], *(n for _, _, n in spec["ports"])]:
        netns.write_sysctl(None, f"net/ipv6/conf/{name}/disable_ipv6", "1")
    for bridge in spec["bridges"]:
        make_hub(bridge)
    program_delay_trees(spec["run_id"], HERE, [*spec["bridges"], *spec["up"]], ports, spec["fabric_links"],
                        spec["fabric_cpus"])
    program_line_trees(spec["run_id"], HERE, [(plan.layers[layer], name) for layer, name in spec["lines"]])


def main(argv: list[str]) -> int:
    try:
        build_part(json.loads(Path(argv[1]).read_text()))
    except (TestbedError, OSError, KeyError, ValueError) as exc:
        print(f"pi2-part: error: {' '.join(str(exc).split())}")
        return 1
    print(OK)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
