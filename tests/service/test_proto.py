"""The API contract: buf-lint clean, and the committed generated code matches the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate_proto.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_proto_is_buf_lint_clean() -> None:
    assert BUF.exists(), "buf is missing: `make setup` installs it with npm into .tools/"
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT / "proto", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
