"""Check that installing distill_nb into Google Colab's environment changes none of Colab's packages.

`make test-colab` builds Colab's stack (ci/colab-constraints.txt) in a venv of its own, asks pip for its plan
for `pip install distill_nb` there, and runs this script with that venv's python:

    python ci/colab_plan.py plan REPORT.json CONSTRAINTS.txt   # print pip's plan; fail if it replaces anything
    python ci/colab_plan.py check CONSTRAINTS.txt              # fail unless every pin is installed as pinned

`plan` reads pip's installation report (`pip install --dry-run --report REPORT.json`): every package pip would
install must be new to the environment, since one already there is one of Colab's (torch included) and
replacing it is what breaks a Colab session. Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by normalised name; any other requirement is an error."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;,]+)", line)
        if not match:
            raise SystemExit(f"{path}:{number}: expected name==version, got {raw!r}")
        pins[normalise(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """Every distribution in this interpreter's environment, by normalised name."""
    return {normalise(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def plan(report_path: Path, constraints_path: Path) -> int:
    pins = read_pins(constraints_path)
    installed = installed_versions()
    report = json.loads(report_path.read_text())
    print(f"pip {report.get('pip_version', '?')}'s plan for installing distill_nb into Colab's environment:")
    replaced = []
    for item in sorted(report["install"], key=lambda item: normalise(item["metadata"]["name"])):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        before = installed.get(normalise(name))
        if before is None:
            print(f"  would install {name} {version} (new)")
        else:
            print(f"  would REPLACE {name} {before} with {version}")
            replaced.append(name)
    if not replaced:
        kept = sum(name in installed for name in pins)
        print(f"it only adds packages: {kept} of Colab's pinned packages and torch {installed.get('torch', 'absent')} "
              "stay as they are")
        return 0
    print(f"FAIL: the install would replace {', '.join(replaced)}; widen the range in pyproject.toml "
          "that forces it", file=sys.stderr)
    return 1


def check(constraints_path: Path) -> int:
    pins = read_pins(constraints_path)
    installed = installed_versions()
    wrong = [f"{name} {installed.get(name, 'missing')} (Colab: {version})"
             for name, version in sorted(pins.items()) if installed.get(name) != version]
    if wrong:
        print("FAIL: not Colab's versions: " + "; ".join(wrong), file=sys.stderr)
        return 1
    shown = ", ".join(f"{name} {pins[name]}" for name in ("ipython", "traitlets", "ipywidgets", "ipykernel", "numpy"))
    print(f"Colab's {len(pins)} pinned packages installed as pinned ({shown}, ...); "
          f"torch {installed.get('torch', 'absent')}, distill_nb {installed.get('distill-nb', 'absent')}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "plan":
        return plan(Path(argv[1]), Path(argv[2]))
    if len(argv) == 2 and argv[0] == "check":
        return check(Path(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
