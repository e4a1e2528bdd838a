"""Print the third-party requirements of pyproject.toml's base dependencies plus the named extras, one per line.

The image build installs these in a layer of their own, before the project's code is copied in, so that an edit
to service/ reuses the cached dependency layers (PyTorch alone is a minute to install) instead of reinstalling
everything. Standard library only: it runs in the bare base image.

    python requirements.py pyproject.toml local triton > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra {', '.join(unknown)} (it has {', '.join(sorted(optional))})")
    return [*project["dependencies"], *(r for e in extras for r in optional[e])]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
