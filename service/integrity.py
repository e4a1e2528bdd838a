"""Model integrity: every network file is checked against the SHA-256 its metadata records, once, at start-up.

A model whose file does not match (or, under the local backend, is missing) is not served: one ERROR line names
the model, the file, the expected and the actual digest; it is left out of ListModels; requests naming it get
FAILED_PRECONDITION with the reason; its health name (`vae.v1.VaeService/<model>`) is NOT_SERVING. The others
serve normally. If no model passes, or the configured default model fails, the service does not start.

What is verified where:
- local backend: both files of every model must be present and match.
- Triton backend: Triton loads its own copy of the repository (baked into its image or mounted), which this
  process cannot read. The files this side has are verified exactly as above; where only the metadata is here,
  one WARNING says so, and nobody on this side verifies those networks. Check Triton's repository itself before
  Triton loads it: `python -m service.integrity --repo DIR` (exit 1 when a file does not match).
- A model exported before digests were recorded (no `sha256` in its metadata) is served, with one WARNING per
  model saying it is unverified; `python -m training rehash --repo DIR` records the digests.

This guards against corrupt, truncated or swapped files, not against someone who can rewrite the metadata too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec, RepositoryError, file_sha256, load_repository

log = logging.getLogger(__name__)
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
MISSING = "missing"
NONE = "(none recorded)"


class IntegrityError(RepositoryError):
    """The service cannot start: no model passed its integrity check, or the default model did not."""


def health_name(model: str) -> str:
    """The per-model name in the standard health service: SERVING while any version of the model serves."""
    return f"{SERVICE_NAME}/{model}"


def version_health_name(model: str, version: str) -> str:
    """The per-version name: SERVING while that version is READY."""
    return f"{SERVICE_NAME}/{model}:{version}"


@dataclass(frozen=True)
class FileCheck:
    network: str
    path: Path
    expected: str | None  # None: the metadata records no digest
    actual: str | None  # None: the file is not here

    @property
    def matches(self) -> bool:
        return self.expected is not None and self.actual == self.expected


@dataclass(frozen=True)
class Verdict:
    served: dict[str, ModelSpec]
    refused: dict[str, str] = field(default_factory=dict)  # model -> the reason a client is told
    unverified: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> networks nobody here checked


def check_files(model: ModelSpec) -> list[FileCheck]:
    """Hash each network file of one model that is present (a few MB each, read in chunks)."""
    checks = []
    for network in (model.encoder, model.decoder):
        path = model.torchscript_path(network)
        actual = file_sha256(path) if path.is_file() else None
        checks.append(FileCheck(network.name, path, network.sha256, actual))
    return checks


def verify_models(models: dict[str, ModelSpec], files_required: bool = True) -> Verdict:
    """Sort the models into served and refused, logging one line per refused model and one per unverified one.

    `files_required`: a missing file refuses its model (the local backend loads them); without it (Triton loads
    its own copies) a missing file is only unverified."""
    served: dict[str, ModelSpec] = {}
    refused: dict[str, str] = {}
    unverified: dict[str, tuple[str, ...]] = {}
    absent: list[str] = []
    for name, model in sorted(models.items()):
        checks = check_files(model)
        bad = [c for c in checks if c.actual is not None and c.expected is not None and c.actual != c.expected]
        bad += [c for c in checks if c.actual is None and files_required]
        if bad:
            log.error(
                "model %r refused, failed its integrity check: %s; requests naming it get FAILED_PRECONDITION",
                name,
                "; ".join(f"{c.path}: expected sha256 {c.expected or NONE}, actual {c.actual or MISSING}" for c in bad),
            )
            files = ", ".join(
                f"{c.path.relative_to(model.directory)} {'is missing' if c.actual is None else 'does not match'}"
                for c in bad
            )
            refused[name] = f"model {name!r} failed its integrity check at start-up ({files}) and is not served"
            continue
        served[name] = model
        no_digest = [c.network for c in checks if c.expected is None and c.actual is not None]
        not_here = [c.network for c in checks if c.actual is None]
        if no_digest:
            log.warning(
                "model %r is served unverified: its metadata records no sha256 for %s "
                "(python -m training rehash --repo %s records them)",
                name, ", ".join(no_digest), model.directory,
            )  # fmt: skip
        absent += not_here
        if no_digest or not_here:
            unverified[name] = tuple(no_digest + not_here)
    if absent:
        directory = next(iter(models.values())).directory
        log.warning(
            "network files %s are not in %s: Triton loads its own copies, which nobody verifies on this side "
            "(python -m service.integrity --repo DIR checks Triton's repository)",
            ", ".join(absent), directory,
        )  # fmt: skip
    return Verdict(served, refused, unverified)


def servable(models: dict[str, ModelSpec], files_required: bool, default_model: str = "") -> Verdict:
    """`verify_models`, then refuse to start when nothing can be served or the configured default cannot."""
    verdict = verify_models(models, files_required)
    if not verdict.served:
        raise IntegrityError(
            f"no model can be served: every model failed its integrity check ({', '.join(sorted(verdict.refused))})"
        )
    if default_model in verdict.refused:
        raise IntegrityError(f"the default model cannot be served: {verdict.refused[default_model]}")
    return verdict


def main(argv: list[str] | None = None) -> int:
    """`python -m service.integrity --repo DIR`: check a repository's files (e.g. Triton's, before it loads them)."""
    parser = argparse.ArgumentParser(prog="python -m service.integrity", description=main.__doc__)
    parser.add_argument("--repo", type=Path, required=True, help="model repository to check")
    args = parser.parse_args(argv)
    try:
        models = load_repository(args.repo)
    except RepositoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = False
    for model in models.values():
        for c in check_files(model):
            state = (
                "MISSING"
                if c.actual is None
                else "ok"
                if c.matches
                else "UNVERIFIED"
                if c.expected is None
                else "MISMATCH"
            )
            failed |= state in ("MISSING", "MISMATCH")
            print(f"{state} {c.path}: expected sha256 {c.expected or NONE}, actual {c.actual or MISSING}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
