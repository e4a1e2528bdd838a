"""The typed client and the people's CLI against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, serving
from vae_client.cli import main as cli
from vae_client.client import VaeClient
from vae_client.codecs import encode_png


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, torch_threads=1)
    with serving(settings) as running:
        yield running


@pytest.fixture
def pngs(tmp_path: Path) -> list[Path]:
    images = (stroke_images(3, seed=6)[0] * 255).round().astype(np.uint8)
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(encode_png(image[None]))
        paths.append(path)
    return paths


def test_client_round_trips(server: ServerThread) -> None:
    with VaeClient(server.address, model="tiny2") as vae:
        assert [m.name for m in vae.list_models()] == ["tiny", "tiny2"] and vae.info().name == "tiny2"
        generated = vae.sample(5, seed=3)
        assert generated.images.shape == (5, 1, 28, 28) and generated.seed == 3
        posterior = vae.encode(generated.images, samples=2, seed=1)
        assert posterior.mean.shape == (5, 4) and posterior.samples is not None and posterior.samples.shape == (5, 2, 4)
        np.testing.assert_allclose(vae.decode(generated.latents), generated.images, atol=1e-6)
        assert vae.reconstruct(generated.images).images.shape == (5, 1, 28, 28)
        row = vae.interpolate(generated.images[0], generated.images[1], steps=4)
        assert row.latents.shape == (4, 4)
        moved = vae.arithmetic([(1.0, generated.latents[0]), (2.0, "slant")])
        assert moved.latents.shape == (1, 4)
        chunks = list(vae.sample_stream(10, chunk_size=4, seed=3))
        assert [len(c.images) for c in chunks] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([c.latents for c in chunks])[:5], generated.latents)
        scores = vae.score((generated.images > 0.5).astype(np.float32), samples=20)
        assert len(scores) == 5 and all(s.log_likelihood < 0 for s in scores)


def test_cli_commands_write_pictures_and_tables(
    server: ServerThread, pngs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", server.address]
    assert cli([*target, "models"]) == 0
    assert "tiny: latent 4" in capsys.readouterr().out
    assert cli([*target, "--seed", "1", "sample", "--n", "9", "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * (3 * 30 + 2), 3 * (3 * 30 + 2))
    assert (
        cli([*target, "interpolate", str(pngs[0]), str(pngs[1]), "--steps", "5", "--out", str(tmp_path / "row.png")])
        == 0
    )
    assert cli([*target, "reconstruct", *map(str, pngs), "--out", str(tmp_path / "rec.png")]) == 0
    assert (
        cli(
            [
                *target,
                "arithmetic",
                "--out",
                str(tmp_path / "a.png"),
                "--",
                f"1:{pngs[0]}",
                f"-1:{pngs[1]}",
                "1.5:thickness",
            ]
        )
        == 0
    )
    for name in ("row.png", "rec.png", "a.png"):
        assert (tmp_path / name).stat().st_size > 100
    assert cli([*target, "encode", *map(str, pngs), "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (3, 4) and np.load(tmp_path / "z.logvar.npy").shape == (3, 4)
    assert cli([*target, "decode", str(tmp_path / "z.npy"), "--out", str(tmp_path / "d.png")]) == 0
    assert (
        cli([*target, "--seed", "2", "stream", "--n", "10", "--chunk", "4", "--out-dir", str(tmp_path / "bulk")]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "bulk").glob("images_*.npy")) == [
        "images_00000.npy",
        "images_00001.npy",
        "images_00002.npy",
    ]
    assert cli([*target, "--model", "tiny2", "info"]) == 0
    assert 'name: "tiny2"' in capsys.readouterr().out
    assert cli([*target, "score", *map(str, pngs), "--samples", "10"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_cli_reports_server_errors_without_traceback(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--target", server.address, "arithmetic", "1:glasses"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: NOT_FOUND") and "Traceback" not in err
