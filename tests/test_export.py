"""Export: TorchScript equals eager, config.pbtxt parses with Triton's own schema and matches the modules,
metadata describes everything the service needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from training.config import ModelConfig
from training.export import derive_python_variant, export_repository, script_modules
from training.model import ConvVAE, load_checkpoint
from vaecore.repository import read_metadata

DTYPES = {model_config_pb2.TYPE_FP32: torch.float32}


@pytest.fixture(scope="module")
def repo(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, checkpoint = load_checkpoint(trained_run / "best.pt")
    out = tmp_path_factory.mktemp("repo")
    evaluation = {"test_nll": 123.4, "importance_samples": 10}
    export_repository(model, checkpoint, out, "tiny", max_batch_size=16, evaluation=evaluation)
    return out


@pytest.fixture(scope="module")
def python_repo(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyrepo")
    derive_python_variant(repo, out, max_batch_size=16)
    return out


def test_torchscript_outputs_equal_eager(trained_model: ConvVAE, tmp_path: Path) -> None:
    encoder, decoder = script_modules(trained_model)
    encoder.save(str(tmp_path / "e.pt"))
    decoder.save(str(tmp_path / "d.pt"))
    encoder, decoder = torch.jit.load(str(tmp_path / "e.pt")), torch.jit.load(str(tmp_path / "d.pt"))
    x = torch.rand(5, 1, 28, 28)
    z = torch.randn(7, 4)
    with torch.no_grad():
        mu, logvar = trained_model.encoder(x)
        logits = trained_model.decoder(z)
        ts_mu, ts_logvar = encoder(x)
        ts_mean, ts_logits = decoder(z)
    torch.testing.assert_close(ts_mu, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(ts_logvar, logvar, rtol=0, atol=1e-6)
    torch.testing.assert_close(ts_logits, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(ts_mean, torch.sigmoid(logits), rtol=0, atol=1e-6)


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("which", ["libtorch", "python"])
def test_every_config_parses_and_names_the_modules_real_tensors(repo: Path, python_repo: Path, which: str) -> None:
    root = repo if which == "libtorch" else python_repo
    configs = sorted(root.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["tiny_decoder", "tiny_encoder"]
    for path in configs:
        config = _parse(path)
        assert config.name == path.parent.name
        if which == "libtorch":
            assert (
                config.platform == "pytorch_libtorch"
                and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
            )
        else:
            assert config.backend == "python" and config.instance_group[0].kind == config.instance_group[0].KIND_CPU
            assert (path.parent / "1" / "model.py").exists()
        assert config.max_batch_size == 16 and config.HasField("dynamic_batching")

        module = torch.jit.load(str(path.parent / "1" / "model.pt"))
        arguments = [a for a in module.forward.schema.arguments if a.name != "self"]
        assert len(config.input) == len(arguments) == 1
        for index, tensor in enumerate(config.input):
            assert tensor.name.endswith(f"__{index}")  # libtorch's positional naming rule
        batch = 3
        example = torch.rand(batch, *config.input[0].dims, dtype=DTYPES[config.input[0].data_type])
        with torch.no_grad():
            outputs = module(example)
        assert len(outputs) == len(config.output)
        for index, (tensor, value) in enumerate(zip(config.output, outputs, strict=True)):
            assert tensor.name.endswith(f"__{index}")
            assert list(value.shape) == [batch, *tensor.dims], tensor.name
            assert value.dtype == DTYPES[tensor.data_type]


def test_config_parse_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nplatform: "pytorch_libtorch"\nmax_batch_sizes: 4\n')
    with pytest.raises(text_format.ParseError):
        _parse(path)


def test_metadata_is_self_describing(repo: Path, trained_model: ConvVAE) -> None:
    metadata = read_metadata(repo / "tiny.vae.json")
    assert metadata["latent_dim"] == 4 and metadata["image_shape"] == [1, 28, 28]
    assert metadata["value_range"] == [0.0, 1.0] and metadata["likelihood"] == "bernoulli"
    assert metadata["encoder"]["model_name"] == "tiny_encoder" and metadata["decoder"]["model_name"] == "tiny_decoder"
    assert [t["name"] for t in metadata["decoder"]["outputs"]] == ["mean__0", "logits__1"]
    assert metadata["dataset"] == "idx" and metadata["evaluation"]["test_nll"] == 123.4
    assert metadata["training"]["config"]["epochs"] == 3 and metadata["training"]["train_seconds"] >= 0
    expected = {f"class_{i}" for i in range(10)} | {"thickness", "slant"}
    assert set(metadata["attributes"]) == expected
    for attribute in metadata["attributes"].values():
        assert len(attribute["vector"]) == 4 and attribute["positives"] > 0 and attribute["negatives"] > 0
    config_text = (repo / "tiny_encoder" / "config.pbtxt").read_text()
    for tensor in metadata["encoder"]["inputs"] + metadata["encoder"]["outputs"]:
        assert f'"{tensor["name"]}"' in config_text


def test_python_variant_shares_torchscript_and_metadata(repo: Path, python_repo: Path) -> None:
    for name in ("tiny_encoder", "tiny_decoder"):
        assert (repo / name / "1" / "model.pt").read_bytes() == (python_repo / name / "1" / "model.pt").read_bytes()
    assert (repo / "tiny.vae.json").read_text() == (python_repo / "tiny.vae.json").read_text()


def test_derive_from_folder_without_models_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vae\.json"):
        derive_python_variant(tmp_path, tmp_path / "out")


def test_an_exported_model_loads_back_for_training(trained_run: Path, repo: Path) -> None:
    """`--init-from` / `evaluate --checkpoint` accept `<repo>/<name>.vae.json`: the same weights come back, so a
    shipped model can be fine-tuned further without its training checkpoint."""
    original, _ = load_checkpoint(trained_run / "best.pt")
    restored, record = load_checkpoint(repo / "tiny.vae.json")
    assert restored.config == original.config
    want, got = original.state_dict(), restored.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert record["train_config"] is not None and record["earlier_train_seconds"] > 0


def test_every_shipped_model_loads_back_for_training() -> None:
    """The shipped models are what `--init-from <repo>/<name>.vae.json` continues from (their training checkpoints
    are not in git): each must rebuild completely, Gaussian scale included."""
    shipped = Path(__file__).resolve().parents[1] / "deploy" / "model_repository"
    files = sorted(shipped.glob("*.vae.json"))
    assert files
    for file in files:
        model, record = load_checkpoint(file)
        metadata = read_metadata(file)
        assert model.config == ModelConfig.from_dict(metadata["model_config"]), file.name
        if metadata.get("gaussian_log_scale") is not None:
            assert model.log_scale.tolist() == pytest.approx(metadata["gaussian_log_scale"]), file.name
        assert record["train_config"] == metadata["training"]["config"], file.name
