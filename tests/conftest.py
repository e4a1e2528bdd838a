from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.datasets import make_idx_dir
from training.config import ModelConfig, TrainConfig
from training.model import ConvVAE, load_checkpoint
from training.train import train

torch.set_num_threads(1)

TINY_MODEL = ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def trained_run(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 3 epochs on the generated IDX data: the run folder."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        dataset="idx",
        data_dir=str(idx_dir),
        epochs=3,
        batch_size=8,
        model=TINY_MODEL,
        threads=1,
        learning_rate=3e-3,
        ema_decay=0.5,
    )
    train(config, out)
    return out


@pytest.fixture(scope="session")
def trained_model(trained_run: Path) -> ConvVAE:
    model, _ = load_checkpoint(trained_run / "best.pt")
    return model


@pytest.fixture(scope="session")
def model_repository(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported twice, as "tiny" and "tiny2": a repository serving two models side by side."""
    from training.export import export_repository

    model, checkpoint = load_checkpoint(trained_run / "best.pt")
    repo = tmp_path_factory.mktemp("model_repository")
    evaluation = {"test_nll": 321.5, "importance_samples": 50}
    for name in ("tiny", "tiny2"):
        export_repository(model, checkpoint, repo, name, max_batch_size=64, evaluation=evaluation)
    return repo


TINY_COLOUR_MODEL = ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16, image_channels=3, image_size=64,
                                stages=4, likelihood="gaussian")  # fmt: skip


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gaussian colour model (3x64x64) trained for 2 epochs on generated coloured strokes: the run folder."""
    from tests.colour import make_colour_idx_dir

    data = make_colour_idx_dir(tmp_path_factory.mktemp("colour_idx"))
    out = tmp_path_factory.mktemp("colour_run")
    config = TrainConfig(dataset="idx", data_dir=str(data), epochs=2, batch_size=16, model=TINY_COLOUR_MODEL,
                         threads=1, learning_rate=3e-3, ema_decay=0.5)  # fmt: skip
    train(config, out)
    return out


@pytest.fixture(scope="session")
def mixed_repository(trained_run: Path, colour_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grey model ("tiny", 1x28x28, Bernoulli) and a colour one ("tinyrgb", 3x64x64, Gaussian) side by side."""
    from training.export import export_repository

    repo = tmp_path_factory.mktemp("mixed_repository")
    for name, run in (("tiny", trained_run), ("tinyrgb", colour_run)):
        model, checkpoint = load_checkpoint(run / "best.pt")
        export_repository(model, checkpoint, repo, name, max_batch_size=64)
    return repo


def perturbed(model: ConvVAE, part: str, seed: int, scale: float = 0.05) -> ConvVAE:
    """A copy of `model` with noise added to the weights of one part ("encoder" or "decoder"): a stand-in for a
    retrain of that part alone."""
    import copy

    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in getattr(changed, part).parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return changed


@pytest.fixture(scope="session")
def versioned_repository(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model "tiny" in three versions: 1 (the trained one, the default), 2 (its decoder retrained: the same latent
    space) and 3 (its encoder retrained: another latent space). Tests that change it work on a copy."""
    from training.export import export_repository

    model, checkpoint = load_checkpoint(trained_run / "best.pt")
    repo = tmp_path_factory.mktemp("versioned_repository")
    export_repository(model, checkpoint, repo, "tiny", max_batch_size=64)
    for version, part in (("2", "decoder"), ("3", "encoder")):
        export_repository(perturbed(model, part, int(version)), checkpoint, repo, "tiny", max_batch_size=64,
                          version=version, make_default=False)  # fmt: skip
    return repo
