"""Model integrity (service/integrity.py): the metadata records each network file's SHA-256, export writes them,
and a real server refuses a model whose file does not match while its other models serve."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from service import __main__ as service_main
from service import integrity
from service.config import Settings
from service.integrity import IntegrityError, health_name, servable, verify_models
from service.server import SERVICE_NAME, start_server
from tests.service.harness import serving, stub_for
from training import __main__ as training_main
from training.export import derive_python_variant
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vaecore.repository import RepositoryError, file_sha256, load_repository, metadata_path, read_metadata

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "model_repository"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _copy(model_repository: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_repository, tmp_path / "repo"))


def _network_file(repo: Path, model: str, part: str) -> Path:
    return repo / f"{model}_{part}" / "1" / "model.pt"


def _flip_one_byte(path: Path) -> tuple[str, str]:
    """(digest before, digest after) of flipping the middle byte of a file."""
    before = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return before, file_sha256(path)


def _settings(repo: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(host="127.0.0.1", port=0, metrics_port=-1, model_repository=repo,
                                     max_batch_size=16, torch_threads=1)  # fmt: skip
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def _integrity_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == integrity.__name__ and r.levelno >= logging.WARNING]


def test_export_records_digests_that_verify(model_repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("tiny", "tiny2"):
        metadata = read_metadata(metadata_path(model_repository, name))
        for part in ("encoder", "decoder"):
            assert metadata[part]["sha256"] == file_sha256(_network_file(model_repository, name, part))
    verdict = verify_models(load_repository(model_repository))
    assert list(verdict.served) == ["tiny", "tiny2"] and not verdict.refused and not verdict.unverified
    assert _integrity_records(caplog) == []


def test_the_shipped_repository_verifies() -> None:
    models = load_repository(SHIPPED)
    assert all(m.encoder.sha256 and m.decoder.sha256 for m in models.values())
    verdict = verify_models(models)
    assert sorted(verdict.served) == sorted(models) and "mnist" in models  # every shipped model, none refused
    assert not verdict.refused and not verdict.unverified
    assert integrity.main(["--repo", str(SHIPPED)]) == 0


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_a_flipped_byte_refuses_that_model_and_the_other_serves(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _copy(model_repository, tmp_path)
    decoder = _network_file(repo, "tiny", "decoder")
    expected, actual = _flip_one_byte(decoder)
    caplog.set_level(logging.INFO)
    with serving(_settings(repo)) as server, stub_for(server) as stub:
        records = _integrity_records(caplog)
        assert len(records) == 1, [r.getMessage() for r in records]
        line = records[0].getMessage()
        assert records[0].levelno == logging.ERROR and "\n" not in line
        assert "'tiny'" in line and str(decoder) in line and expected in line and actual in line
        assert "tiny2" not in line

        listed = stub.ListModels(V.ListModelsRequest())
        assert [m.name for m in listed.models] == ["tiny2"] and listed.default_model == "tiny2"

        latents = array_to_tensor(np.zeros((2, 4), np.float32))
        for request in (V.DecodeRequest(model="tiny", latents=latents), V.GetModelInfoRequest(model="tiny")):
            method = stub.Decode if isinstance(request, V.DecodeRequest) else stub.GetModelInfo
            with pytest.raises(grpc.RpcError) as refused:
                method(request)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'tiny'" in refused.value.details() and "integrity" in refused.value.details()
            assert "tiny_decoder/1/model.pt" in refused.value.details()
        assert stub.Decode(V.DecodeRequest(model="tiny2", latents=latents)).images.tensor.shape[:1] == [2]
        assert stub.Decode(V.DecodeRequest(latents=latents)).model == "tiny2"  # the default is a served model
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Decode(V.DecodeRequest(model="nope", latents=latents))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        deadline = time.monotonic() + 30
        while _health(server.address, SERVICE_NAME) != SERVING:  # readiness follows the backend; poll for it
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.05)
        assert _health(server.address, health_name("tiny2")) == SERVING
        assert _health(server.address, health_name("tiny")) == NOT_SERVING
        assert _health(server.address, "") == SERVING


def test_every_model_tampered_refuses_to_start(model_repository: Path, tmp_path: Path) -> None:
    repo = _copy(model_repository, tmp_path)
    _flip_one_byte(_network_file(repo, "tiny", "encoder"))
    _network_file(repo, "tiny2", "decoder").unlink()
    with pytest.raises(IntegrityError, match=r"^no model can be served: .*\(tiny, tiny2\)$"):
        asyncio.run(start_server(_settings(repo), CollectorRegistry()))


def test_the_command_line_says_so_in_one_line(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _copy(model_repository, tmp_path)
    for name in ("tiny", "tiny2"):
        _flip_one_byte(_network_file(repo, name, "decoder"))
    argv = ["--model-repository", str(repo), "--port", "0", "--metrics-port", "-1"]
    assert service_main.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: no model can be served: every model failed its integrity check (tiny, tiny2)"
    ]
    assert integrity.main(["--repo", str(repo)]) == 1
    assert capsys.readouterr().out.count("MISMATCH") == 2


def test_a_default_model_that_fails_stops_the_start(model_repository: Path, tmp_path: Path) -> None:
    repo = _copy(model_repository, tmp_path)
    _flip_one_byte(_network_file(repo, "tiny", "encoder"))
    with pytest.raises(IntegrityError, match=r"default model cannot be served: model 'tiny' failed"):
        servable(load_repository(repo), files_required=True, default_model="tiny")
    assert list(servable(load_repository(repo), True, "tiny2").served) == ["tiny2"]


def test_a_missing_file_refuses_locally_and_is_unverified_under_triton(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _copy(model_repository, tmp_path)
    _network_file(repo, "tiny", "encoder").unlink()
    local = verify_models(load_repository(repo), files_required=True)
    assert list(local.served) == ["tiny2"] and "tiny_encoder/1/model.pt is missing" in local.refused["tiny"]
    caplog.clear()

    # Under Triton, only metadata may be here: served, and one line says nobody on this side verifies it.
    _network_file(repo, "tiny", "decoder").unlink()
    triton = verify_models(load_repository(repo), files_required=False)
    assert list(triton.served) == ["tiny", "tiny2"] and triton.unverified == {"tiny": ("tiny_encoder", "tiny_decoder")}
    [record] = _integrity_records(caplog)
    assert "nobody verifies" in record.getMessage() and "tiny_encoder, tiny_decoder" in record.getMessage()
    # A file that is here is still checked under Triton.
    _flip_one_byte(_network_file(repo, "tiny2", "decoder"))
    assert list(verify_models(load_repository(repo), files_required=False).refused) == ["tiny2"]


def test_an_older_export_without_digests_serves_unverified_and_rehash_records_them(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _copy(model_repository, tmp_path)
    path = metadata_path(repo, "tiny")
    document = json.loads(path.read_text())
    for part in ("encoder", "decoder"):
        del document["versions"]["1"][part]["sha256"]
    path.write_text(json.dumps(document))
    verdict = verify_models(load_repository(repo))
    assert list(verdict.served) == ["tiny", "tiny2"] and verdict.unverified == {
        "tiny": ("tiny_encoder", "tiny_decoder")
    }
    [record] = _integrity_records(caplog)
    assert "'tiny' is served unverified" in record.getMessage() and "rehash" in record.getMessage()

    assert training_main.main(["rehash", "--repo", str(repo)]) == 0
    assert not verify_models(load_repository(repo)).unverified

    # rehash does not launder a changed file: a recorded digest is only overwritten with --replace.
    _flip_one_byte(_network_file(repo, "tiny", "decoder"))
    assert training_main.main(["rehash", "--repo", str(repo)]) == 2
    assert list(verify_models(load_repository(repo)).refused) == ["tiny"]
    assert training_main.main(["rehash", "--repo", str(repo), "--replace"]) == 0
    assert not verify_models(load_repository(repo)).refused


def test_a_malformed_digest_names_the_file(model_repository: Path, tmp_path: Path) -> None:
    repo = _copy(model_repository, tmp_path)
    path = metadata_path(repo, "tiny")
    document = json.loads(path.read_text())
    document["versions"]["1"]["decoder"]["sha256"] = "ABC"
    path.write_text(json.dumps(document))
    with pytest.raises(RepositoryError, match=r"tiny\.vae\.json.*tiny_decoder: sha256 must be 64 lowercase hex"):
        load_repository(repo)


def test_the_python_variant_carries_digests_and_refuses_a_changed_source(
    model_repository: Path, tmp_path: Path
) -> None:
    derived = tmp_path / "python"
    derive_python_variant(model_repository, derived, max_batch_size=16)
    verdict = verify_models(load_repository(derived))
    assert list(verdict.served) == ["tiny", "tiny2"] and not verdict.unverified

    repo = _copy(model_repository, tmp_path)
    _flip_one_byte(_network_file(repo, "tiny2", "encoder"))
    with pytest.raises(RepositoryError, match=r"tiny2_encoder/1/model\.pt has sha256 .* metadata records"):
        derive_python_variant(repo, tmp_path / "python2", max_batch_size=16)
