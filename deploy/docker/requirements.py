"""Print the third-party requirements of pyproject.toml's base dependencies plus the named extras, one per line.
A dependency that is a distribution of this repository (vae-client, clients/python) is replaced by its own
dependencies: it is installed from its folder with the project's code, not from an index.

The image build installs these in a layer of their own, before the project's code is copied in, so that an edit
to service/ reuses the cached dependency layers (PyTorch alone is a minute to install) instead of reinstalling
everything. Standard library only: it runs in the bare base image.

    python requirements.py pyproject.toml local triton > requirements.txt
"""

from __future__ import annotations

import os
import re
import sys
import tomllib

LOCAL = {"vae-client": "clients/python/pyproject.toml"}  # distributions of this repository, by name


def _project(pyproject: str) -> dict:
    with open(pyproject, "rb") as f:
        return tomllib.load(f)["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    project = _project(pyproject)
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra {', '.join(unknown)} (it has {', '.join(sorted(optional))})")
    wanted = [*project["dependencies"], *(r for e in extras for r in optional[e])]
    out = []
    for requirement in wanted:
        local = LOCAL.get(_name(requirement))
        out += _project(os.path.join(os.path.dirname(pyproject), local))["dependencies"] if local else [requirement]
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
