"""The training loop on tiny generated data: learning happens, files appear, resume is exact."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from tests.conftest import TINY_MODEL
from training.config import TrainConfig
from training.model import ConvVAE, load_checkpoint
from training.train import kl_weight, total_train_seconds, train


def test_training_writes_metrics_and_improves(trained_run: Path) -> None:
    with (trained_run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_elbo"]) > float(rows[0]["train_elbo"]) + 20
    assert float(rows[-1]["valid_elbo"]) > float(rows[0]["valid_elbo"])
    assert (trained_run / "metrics.json").exists() and (trained_run / "best.pt").exists()


def test_checkpoint_rebuilds_model_from_file_alone(trained_run: Path) -> None:
    model, checkpoint = load_checkpoint(trained_run / "last.pt")
    assert isinstance(model, ConvVAE) and model.config == TINY_MODEL
    assert checkpoint["train_config"]["epochs"] == 3 and checkpoint["epoch"] == 3
    assert checkpoint["label_names"] == [str(i) for i in range(10)]


def _config(idx_dir: Path, **overrides: object) -> TrainConfig:
    base = dict(dataset="idx", data_dir=str(idx_dir), epochs=3, batch_size=64, model=TINY_MODEL, threads=1, seed=7)
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_resume_continues_bit_for_bit(idx_dir: Path, tmp_path: Path) -> None:
    straight = train(_config(idx_dir), tmp_path / "straight")
    train(_config(idx_dir), tmp_path / "split", stop_after_epoch=1)
    first_half = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert first_half["epoch"] == 1
    train(_config(idx_dir, epochs=99), tmp_path / "split", resume=True)  # the run's stored settings win
    a = torch.load(straight.parent / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert b["epoch"] == 3
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_same_seed_same_result_and_iwae_objective_runs(idx_dir: Path, tmp_path: Path) -> None:
    config = _config(idx_dir, epochs=1, objective="iwae", train_samples=3)
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["history"][0]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["history"][0]
    assert a["train_loss"] == b["train_loss"] and a["train_elbo"] < 0


def test_init_from_starts_from_given_weights(idx_dir: Path, trained_run: Path, tmp_path: Path) -> None:
    start, _ = load_checkpoint(trained_run / "best.pt")
    fresh = ConvVAE(TINY_MODEL)
    config = _config(idx_dir, epochs=1, learning_rate=1e-12, min_learning_rate=1e-12)
    tuned, tuned_checkpoint = load_checkpoint(train(config, tmp_path / "ft", init_from=trained_run / "best.pt"))
    _, start_checkpoint = load_checkpoint(trained_run / "best.pt")
    assert total_train_seconds(tuned_checkpoint) > total_train_seconds(start_checkpoint) > 0
    parameters = zip(start.state_dict().items(), tuned.state_dict().values(), fresh.state_dict().values(), strict=True)
    for (name, p_start), p_tuned, p_fresh in parameters:
        assert torch.allclose(p_start, p_tuned, atol=1e-6), name
        if p_start.numel() > 1:
            assert not torch.allclose(p_fresh, p_tuned), name


def test_kl_warmup_ramps_linearly_to_beta() -> None:
    config = TrainConfig(beta=2.0, kl_warmup_epochs=4.0)
    assert [kl_weight(config, e) for e in (0.0, 1.0, 4.0, 9.0)] == [0.0, 0.5, 2.0, 2.0]
    assert kl_weight(TrainConfig(beta=0.5), 0.0) == 0.5


def test_gaussian_likelihood_trains_and_learns_its_scale(idx_dir: Path, tmp_path: Path) -> None:
    config = _config(idx_dir, epochs=2, batch_size=16, learning_rate=3e-3, ema_decay=0.5)
    config.model = TINY_MODEL.__class__(**{**TINY_MODEL.to_dict(), "likelihood": "gaussian"})
    model, checkpoint = load_checkpoint(train(config, tmp_path / "g"))
    history = checkpoint["history"]
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    log_scale = model.decoder_log_scale()
    assert log_scale is not None and float(log_scale.detach()[0]) != -2.0  # moved from its initial value
