"""install.sh installs every program the code and the tests run, and the main job needs only the base install.

A fresh Debian/Ubuntu machine has only its Essential and priority-`required` packages. Anything else that a
command or a test runs must come from a package install.sh installs, or the run works only on machines where
somebody once installed it by hand (round 1: CI green here, 16 failures and a broken main job on a fresh
machine: brctl, modprobe and scikit-learn were missing). These tests read the code for the programs it runs,
so a new program without an install step fails here, on any machine, not only on a fresh one.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "install.sh"
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
# Programs only looked for, to report a capability (pi2 doctor), and never needed: why each is optional.
OPTIONAL = {
    "ovs-vsctl": "pi2 doctor reports whether Open vSwitch is there; no command or test runs it",
}
# Programs the code runs that no argv literal names: why each is needed.
IMPLICIT = {
    "brctl": "Mininet's LinuxBridge (--switch lxbr, the Mininet backend) runs brctl for every switch",
}
# Shell words that start a simple command without being a program, and lines that are not commands.
SHELL_PREFIXES = {"exec", "do", "then", "else"}
SHELL_BUILTINS = {":", "cd", "echo", "printf", "export", "set", "test", "[", "true", "false", "done", "fi", "for", "if"}


def _argv_programs(path: Path) -> set[str]:
    """Programs named by argv literals (subprocess.run(["tc", …])) and which("…") lookups in one file
    (shutil.which, or a wrapper whose last argument is the program)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0]
        last = node.args[-1]
        if name == "which" and isinstance(last, ast.Constant) and isinstance(last.value, str):
            found.add(last.value)
        elif name in SUBPROCESS_CALLS and isinstance(first, (ast.List, ast.Tuple)) and first.elts:
            head = first.elts[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                found.add(Path(head.value).name)
    return found


def shell_programs(script: str) -> set[str]:
    """First words of the simple commands of a shell script (builtins, assignments, `exec`/`ip netns exec NS`
    prefixes and words made by formatting, "X", skipped)."""
    found = set()
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word not in (";", "&&", "||", "|"):
                command.append(word)
                continue
            while command and (command[0] in SHELL_PREFIXES or re.fullmatch(r"\w+=.*", command[0])):
                command = command[1:]
            if command[:3] == ["ip", "netns", "exec"] and len(command) > 4:
                command = command[4:]
            if command and command[0] not in SHELL_BUILTINS and not command[0].startswith(("/run/", "$", "X")):
                found.add(Path(command[0]).name)
            command = []
    return found


def _literal_text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each formatted value as "X"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "X" for part in node.values)
    return None


def _script_programs(path: Path) -> set[str]:
    """Programs run by the shell scripts written as literals in one file: texts that start with
    `#!/bin/sh` or `set -e` (the guest's init script, the guest tests' scripts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        text = _literal_text(node)
        if text is not None and text.lstrip().startswith(("#!/bin/sh", "set -e")):
            found |= shell_programs(text)
    return found - {Path(sys.executable).name}


def programs_used(tops: tuple[str, ...]) -> dict[str, str]:
    """program → where it is used, for the Python files under `tops`."""
    used: dict[str, str] = {}
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            for program in _argv_programs(path) | _script_programs(path):
                used.setdefault(program, str(path.relative_to(REPO)))
    if "testbed" in tops:
        text = "".join(p.read_text() for p in (REPO / "testbed").rglob("*.py"))
        for program, why in IMPLICIT.items():
            if program == "brctl" and "lxbr" not in text and "LinuxBridge" not in text:
                continue
            used.setdefault(program, why)
    return used


def install_packages() -> tuple[set[str], set[str]]:
    """(base, --dev) Debian packages install.sh installs, read from its APT_PACKAGES arrays."""
    text = INSTALL_SH.read_text()
    base = re.search(r"^APT_PACKAGES=\(([^)]*)\)", text, re.M)
    dev = re.search(r'^\[ "\$DEV" = 1 \] && APT_PACKAGES\+=\(([^)]*)\)', text, re.M)
    assert base and dev, "install.sh: expected APT_PACKAGES=(…) and the --dev APT_PACKAGES+=(…) lines"
    return set(base.group(1).split()), set(dev.group(1).split())


def debian_package(program: str) -> str | None:
    """The package that owns the program's file (merged /usr: dpkg may know it under /bin or /sbin)."""
    path = shutil.which(program)
    if path is None:
        return None
    real = os.path.realpath(path)
    for candidate in dict.fromkeys([path, real, re.sub(r"^/usr", "", path), re.sub(r"^/usr", "", real)]):
        done = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if done.returncode == 0:
            owner = done.stdout.splitlines()[0].split(":")[0]
            if not owner.startswith("diversion by"):
                return owner
    return "(not from a Debian package)"


def always_there(package: str) -> bool:
    """Essential or priority-required: debootstrap's minimal Debian has it."""
    shown = subprocess.run(["dpkg-query", "-W", "-f=${Priority} ${Essential}", package],
                           capture_output=True, text=True).stdout.split()
    return bool(shown) and (shown[0] == "required" or shown[-1] == "yes")


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="install.sh targets Debian/Ubuntu (dpkg)")


def test_the_scan_finds_the_programs_it_is_meant_to():
    """Guards the scan itself: programs every part of the project runs must be found."""
    commands = programs_used(("testbed",))
    assert {"linux.uml", "modprobe", "mnexec", "tcpdump", "brctl", "mount"} <= set(commands), commands
    assert {"tc", "ip", "vagrant", "busybox"} <= set(programs_used(("tests", "bench"))), programs_used(("tests", "bench"))


def test_the_provisioning_test_finds_its_packages_on_this_machine():
    """tests/vagrant runs vagrant/provision.sh offline in a guest over this machine's root: apt can only
    install what is already here, so install.sh --dev must install every package the provisioning names."""
    provision = re.search(r"^APT_PACKAGES=\(([^)]*)\)", (REPO / "vagrant" / "provision.sh").read_text(), re.M)
    assert provision, "vagrant/provision.sh: expected an APT_PACKAGES=(…) line"
    base, dev = install_packages()
    assert set(provision.group(1).split()) - {"python3"} <= base | dev, set(provision.group(1).split()) - base - dev


@needs_dpkg
@pytest.mark.parametrize("tops, lists", [(("testbed", "topologies"), "base"), (("tests", "bench"), "base and --dev")])
def test_every_program_comes_from_a_package_install_sh_installs(tops, lists):
    base, dev = install_packages()
    allowed = base if lists == "base" else base | dev
    problems = []
    for program, where in sorted(programs_used(tops).items()):
        if program in OPTIONAL:
            continue
        package = debian_package(program)
        if package is None:
            problems.append(f"{program} (used by {where}) is not installed")
        elif package not in allowed and not always_there(package):
            problems.append(f"{program} (used by {where}) comes from {package}, which install.sh's {lists} "
                            "packages do not name")
    assert not problems, "; ".join(problems)


# Runs the main job's steps in a fresh interpreter as if only the base install were there: modules of
# the distributions it lacks cannot be imported (so optional imports fall back, as they would there),
# and every file opened inside site-packages is recorded (data files as well as modules).
MAIN_JOB = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[2]))

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the base install)", name=name)
        return None

sys.meta_path.insert(0, Absent())
opened = set()
sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str) and opened.add(args[0]))
from testbed.cli import main
for argv in json.loads(sys.argv[1]):
    sys.argv = ["pi2", *argv]
    try:
        main()
    except SystemExit as done:
        if done.code:
            raise
print(json.dumps(sorted(p for p in opened if "site-packages" in p)), file=sys.stderr)
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_install() -> set[str]:
    """Distributions install.sh's base step brings in: pyproject.toml's dependencies and the extras
    install.sh names without --dev, then theirs, recursively (installed metadata)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = re.search(r'^EXTRAS="([^"]*)"', INSTALL_SH.read_text(), re.M)
    assert extras, 'install.sh: expected an EXTRAS="…" line for the base install'
    todo = list(project["dependencies"])
    for extra in extras.group(1).split(","):
        todo += project["optional-dependencies"][extra]
    seen = {_norm(project["name"])}
    while todo:
        req = Requirement(todo.pop())
        if _norm(req.name) in seen or not (req.marker is None or req.marker.evaluate({"extra": ""})):
            continue
        seen.add(_norm(req.name))
        todo += importlib.metadata.requires(req.name) or []
    return seen


def test_the_main_job_needs_only_the_base_install(tmp_path):
    """pi2 eval and pi2 compile of the bundled network on its data set (pi2 infer too, as root) read
    only what the base install brings, modules and data files alike: nothing --dev or another extra adds."""
    from testbed.infer.pipeline import BUNDLED_NETWORK

    steps = [["eval", str(BUNDLED_NETWORK), "--limit", "20"],
             ["compile", str(BUNDLED_NETWORK), "--profile", "shaper", "-o", str(tmp_path / "plan.json")]]
    if os.geteuid() == 0:
        steps.append(["infer", "--limit", "4", "--tau", "6ms", "--json"])
    owners = importlib.metadata.packages_distributions()
    base = base_install()
    blocked = sorted(top for top, dists in owners.items() if not {_norm(d) for d in dists} & base)
    done = subprocess.run([sys.executable, "-c", MAIN_JOB, json.dumps(steps), json.dumps(blocked)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, f"the main job fails with only the base install: {done.stderr[-2000:]}"
    used = {}
    for path in json.loads(done.stderr.strip().splitlines()[-1]):
        parts = Path(path).parts
        top = Path(parts[parts.index("site-packages") + 1]).stem.split(".")[0] if parts[-1] != "site-packages" else ""
        for dist in owners.get(top, []):
            used.setdefault(_norm(dist), path)
    assert "scikit-learn" in used, "the scan should see the digits table being read from scikit-learn"
    outside = {dist: path for dist, path in used.items() if dist not in base}
    assert not outside, f"the main job reads files of distributions the base install lacks: {outside}"
