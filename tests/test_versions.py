"""Versions in the repository: `export --version N` adds a version beside the others, each version's latent space
is derived from its encoder alone, the configs' version_policy lists what the metadata lists (so Triton serves the
same set), and the Python-backend derivation carries every version."""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from training import __main__ as training_main
from training.export import derive_python_variant
from vaecore.repository import file_sha256, metadata_path, parse_versions


def _policy(repo: Path, network: str) -> list[int]:
    config = text_format.Parse((repo / network / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return sorted(config.version_policy.specific.versions)


def test_export_adds_versions_and_keeps_the_default(versioned_repository: Path) -> None:
    model = parse_versions(metadata_path(versioned_repository, "tiny"))
    assert sorted(model.versions) == ["1", "2", "3"] and model.default_version == "1"  # --no-default kept 1
    for version in ("1", "2", "3"):
        spec = model.versions[version]
        assert spec.version == version and spec.torchscript_path(spec.encoder).is_file()
        assert spec.encoder.sha256 == file_sha256(spec.torchscript_path(spec.encoder))
    for network in ("tiny_encoder", "tiny_decoder"):
        assert _policy(versioned_repository, network) == [1, 2, 3]


def test_the_latent_space_follows_the_encoder_not_the_decoder(versioned_repository: Path) -> None:
    versions = parse_versions(metadata_path(versioned_repository, "tiny")).versions
    assert versions["1"].latent_space.startswith("ls1-")
    assert versions["2"].latent_space == versions["1"].latent_space  # decoder-only retrain: the same space
    assert versions["2"].decoder.sha256 != versions["1"].decoder.sha256
    assert versions["3"].latent_space != versions["1"].latent_space  # encoder retrain: a new space


def test_rehash_derives_the_same_latent_space_from_the_files(versioned_repository: Path, tmp_path: Path) -> None:
    """An older export without `latent_space` gets the identity export would have written, from its encoder."""
    repo = tmp_path / "repo"
    shutil.copytree(versioned_repository, repo)
    expected = {v: s.latent_space for v, s in parse_versions(metadata_path(repo, "tiny")).versions.items()}
    text = metadata_path(repo, "tiny").read_text()
    for space in set(expected.values()):
        text = text.replace(f'"latent_space": "{space}"', '"latent_space": ""')
    metadata_path(repo, "tiny").write_text(text)
    assert {s.latent_space[:4] for s in parse_versions(metadata_path(repo, "tiny")).versions.values()} == {"lsf-"}
    assert training_main.main(["rehash", "--repo", str(repo)]) == 0
    assert {v: s.latent_space for v, s in parse_versions(metadata_path(repo, "tiny")).versions.items()} == expected


def test_versions_command_sets_the_default_and_removes_one(versioned_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(versioned_repository, repo)
    assert training_main.main(["versions", "--repo", str(repo), "--name", "tiny", "--set-default", "2",
                               "--remove", "3"]) == 0  # fmt: skip
    model = parse_versions(metadata_path(repo, "tiny"))
    assert sorted(model.versions) == ["1", "2"] and model.default_version == "2"
    assert _policy(repo, "tiny_decoder") == [1, 2]  # Triton is told to serve what the metadata lists
    assert training_main.main(["versions", "--repo", str(repo), "--name", "tiny", "--remove", "9"]) == 2


def test_the_python_variant_carries_every_version(versioned_repository: Path, tmp_path: Path) -> None:
    derived = tmp_path / "python"
    derive_python_variant(versioned_repository, derived)
    model = parse_versions(metadata_path(derived, "tiny"))
    assert sorted(model.versions) == ["1", "2", "3"]
    for version in ("1", "2", "3"):
        assert (derived / "tiny_decoder" / version / "model.py").is_file()
    assert _policy(derived, "tiny_encoder") == [1, 2, 3]
