"""The model-repository contract (vaecore.repository): what export writes is what the service reads, the format
version is enforced, and the serving code never reaches into training/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vaecore.repository import (
    DEFAULT_MODEL_FILE,
    FORMAT_VERSION,
    RepositoryError,
    decoder_spec,
    default_model,
    encoder_spec,
    load_repository,
    metadata_files,
    parse_metadata,
    parse_versions,
    read_metadata,
    remove_version,
    set_default_version,
    write_metadata,
)

ROOT = Path(__file__).resolve().parent.parent
SERVING_PACKAGES = ("service", "vaecore")
NOT_IN_THE_IMAGE = {"training", "tests", "tools", "benchmarks", "matplotlib", "pytest", "tqdm", "pytriton"}


def _metadata(name: str = "m") -> dict[str, object]:
    return {
        "name": name,
        "latent_dim": 3,
        "image_shape": [1, 4, 4],
        "likelihood": "bernoulli",
        "encoder": encoder_spec(name, (1, 4, 4), 3).to_json(),
        "decoder": decoder_spec(name, (1, 4, 4), 3).to_json(),
        "attributes": {"up": {"vector": [1.0, 0.0, 0.0]}},
        "evaluation": {"test_nll": 90.5, "importance_samples": 100},
    }


def test_what_is_written_reads_back(tmp_path: Path) -> None:
    path = write_metadata(tmp_path, _metadata())
    assert path.name == "m.vae.json" and metadata_files(tmp_path) == [path]
    assert json.loads(path.read_text())["format"] == FORMAT_VERSION
    spec = load_repository(tmp_path)["m"]
    assert spec.encoder.input_name == "image__0" and spec.encoder.output_names == ("mu__0", "logvar__1")
    assert spec.decoder.input_name == "latent__0" and spec.decoder.output_names == ("mean__0", "logits__1")
    assert spec.torchscript_path(spec.decoder) == tmp_path / "m_decoder" / "1" / "model.pt"
    assert spec.test_nll == 90.5 and spec.attributes["up"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("version", [None, 0, FORMAT_VERSION + 1, "1"])
def test_an_unknown_format_version_is_refused_by_name(tmp_path: Path, version: object) -> None:
    document = {**_metadata(), "format": version}
    if version is None:
        del document["format"]
    path = tmp_path / "m.vae.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RepositoryError, match=rf"format {version!r}.*reads formats 1, {FORMAT_VERSION}"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_shape": [4, 4]}, "image_shape must be"),
        ({"latent_dim": None}, "TypeError"),
        ({"encoder": {}}, "KeyError"),
    ],
)
def test_a_broken_metadata_file_names_itself(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = tmp_path / "m.vae.json"
    body = {k: v for k, v in {**_metadata(), **change}.items() if k != "name"}
    path.write_text(
        json.dumps({"format": FORMAT_VERSION, "name": "m", "default_version": "1", "versions": {"1": body}})
    )
    with pytest.raises(RepositoryError, match=rf"m\.vae\.json.*version 1: .*{message}"):
        parse_metadata(path)


def test_format_1_still_reads_as_its_one_version(tmp_path: Path) -> None:
    path = tmp_path / "m.vae.json"
    path.write_text(json.dumps({"format": 1, **_metadata()}))
    versions = parse_versions(path)
    assert list(versions.versions) == ["1"] and versions.default_version == "1"
    assert versions.default.torchscript_path(versions.default.encoder) == tmp_path / "m_encoder" / "1" / "model.pt"
    assert versions.default.latent_space == ""  # no digest recorded, no identity: served unstamped


def test_versions_are_added_kept_and_removed(tmp_path: Path) -> None:
    write_metadata(tmp_path, _metadata())
    write_metadata(tmp_path, {**_metadata(), "latent_space": "ls1-x"}, version="2", make_default=False)
    model = parse_versions(tmp_path / "m.vae.json")
    assert sorted(model.versions) == ["1", "2"] and model.default_version == "1"
    assert model.versions["2"].latent_space == "ls1-x" and model.versions["2"].version == "2"
    assert model.versions["2"].torchscript_path(model.versions["2"].decoder) == tmp_path / "m_decoder/2/model.pt"
    set_default_version(tmp_path, "m", "2")
    assert parse_metadata(tmp_path / "m.vae.json").version == "2"
    remove_version(tmp_path, "m", "2")
    assert parse_versions(tmp_path / "m.vae.json").default_version == "1"
    with pytest.raises(RepositoryError, match="last"):
        remove_version(tmp_path, "m", "1")


def test_a_version_with_other_tensors_is_refused(tmp_path: Path) -> None:
    write_metadata(tmp_path, _metadata())
    wider = {**_metadata(), "latent_dim": 5, "encoder": encoder_spec("m", (1, 4, 4), 5).to_json(),
             "decoder": decoder_spec("m", (1, 4, 4), 5).to_json()}  # fmt: skip
    with pytest.raises(RepositoryError, match=r"other tensors.*another --name"):
        write_metadata(tmp_path, wider, version="2")
    assert list(parse_versions(tmp_path / "m.vae.json").versions) == ["1"]  # the metadata is untouched


@pytest.mark.parametrize("version", ["0", "01", "v2", "", "1.5"])
def test_a_version_is_a_positive_integer(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        write_metadata(tmp_path, _metadata(), version=version)


def test_an_empty_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no \*\.vae\.json"):
        load_repository(tmp_path)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_serving_code_imports_nothing_the_image_leaves_out() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & NOT_IN_THE_IMAGE)
        for package in SERVING_PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if _imports(path) & NOT_IN_THE_IMAGE
    }
    assert offenders == {}


def test_the_server_and_cli_start_without_training_installed() -> None:
    """Import every serving module with `training` (and matplotlib) made unimportable, as in the service image."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for package in SERVING_PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import sys, importlib\n"
        "for blocked in ('training', 'matplotlib', 'pytest'): sys.modules[blocked] = None\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_default_model_is_the_override_else_the_repository_file_else_the_first_by_name(tmp_path: Path) -> None:
    names = ["zeta", "alpha", "mnist"]
    assert default_model(tmp_path, names) == "alpha"
    (tmp_path / DEFAULT_MODEL_FILE).write_text("mnist\n")
    assert default_model(tmp_path, names) == "mnist"
    assert default_model(tmp_path, names, override="zeta") == "zeta"
    with pytest.raises(RepositoryError, match="'nope' is not in"):
        default_model(tmp_path, names, override="nope")
    (tmp_path / DEFAULT_MODEL_FILE).write_text("gone")
    with pytest.raises(RepositoryError, match="'gone' is not in"):
        default_model(tmp_path, names)
