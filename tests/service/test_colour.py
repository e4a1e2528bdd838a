"""Colour models end to end: a grey model ("tiny", 1x28x28) and an RGB one ("tinyrgb", 3x64x64, Gaussian) served
by name from one server, every RPC on the RGB model with tensor and PNG inputs and outputs, the typed client
and the CLI writing colour pictures.

PNG inputs follow the model's channels: RGB, RGBA (alpha ignored) and palette files are read as colour; a
grayscale PNG sent to a colour model is accepted with its gray value repeated in R, G and B (a gray picture is
a colour picture whose channels agree), as an RGB PNG sent to a grey model is reduced by ITU-R 601 luma. Tensors
are never converted: a tensor must have exactly the model's [N, C, H, W]."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from service.config import Settings
from tests.colour import colour_images
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, serving
from vae_client.cli import main as cli
from vae_client.cli import read_pngs as read_cli_pngs
from vae_client.client import VaeClient
from vae_client.codecs import array_to_tensor, encode_png, tensor_to_array
from vae_client.images import tile
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.repository import read_metadata
from vaecore.rng import generator

V = vae_pb2
RGB = "tinyrgb"
SHAPE = (3, 64, 64)
PNG_OUT = V.OutputOptions(format=V.IMAGE_FORMAT_PNG)


@pytest.fixture(scope="module")
def server(mixed_repository: Path) -> Iterator[ServerThread]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=mixed_repository,
                        max_batch_size=16, max_items=512, torch_threads=1)  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def networks(mixed_repository: Path) -> dict[str, torch.jit.ScriptModule]:
    return {part: torch.jit.load(str(mixed_repository / f"{RGB}_{part}" / "1" / "model.pt"))
            for part in ("encoder", "decoder")}  # fmt: skip


@pytest.fixture(scope="module")
def metadata(mixed_repository: Path) -> dict:
    return read_metadata(mixed_repository / f"{RGB}.vae.json")


def attribute_name(metadata: dict) -> str:
    """An attribute of the colour model (which ones an export computes is the exporter's business)."""
    assert metadata["attributes"]
    return sorted(metadata["attributes"])[0]


def local(networks: dict, part: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        a, b = networks[part](torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return a.numpy(), b.numpy()


def array(tensor: V.Tensor) -> np.ndarray:
    return tensor_to_array(tensor, "reply").copy()


def tensor_images(x: np.ndarray) -> V.Images:
    return V.Images(tensor=array_to_tensor(x))


def png_images(files: list[bytes]) -> V.Images:
    return V.Images(png=V.PngImages(images=files))


def as_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def png_file(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_pictures(x: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(image.transpose(1, 2, 0), mode="RGB") for image in as_uint8(x)]


def read_pngs(files: list[bytes] | V.Images) -> np.ndarray:
    """uint8 [N, 3, 64, 64] from PNG replies, checking that each is an RGB PNG of 64x64."""
    files = list(files.png.images) if isinstance(files, V.Images) else files
    out = []
    for data in files:
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (64, 64)
            out.append(np.asarray(picture).transpose(2, 0, 1))
    return np.stack(out)


def assert_png_reply_matches(png_reply: V.Images, float_images: np.ndarray) -> None:
    """A PNG reply holds the same pixels as the float32 reply, rounded to 8 bits."""
    np.testing.assert_array_equal(read_pngs(png_reply), as_uint8(float_images))


# --- several models by name ------------------------------------------------------------------------------


def test_grey_and_colour_models_are_served_side_by_side_by_name(stub: VaeServiceStub) -> None:
    models = {m.name: m for m in stub.ListModels(V.ListModelsRequest()).models}
    assert sorted(models) == ["tiny", RGB]
    assert list(models["tiny"].image_shape) == [1, 28, 28] and models["tiny"].likelihood == "bernoulli"
    assert list(models[RGB].image_shape) == [3, 64, 64] and models[RGB].likelihood == "gaussian"
    info = stub.GetModelInfo(V.GetModelInfoRequest(model=RGB)).info
    assert info.name == RGB and list(info.image_shape) == [3, 64, 64] and info.latent_dim == 4
    grey = stub.Sample(V.SampleRequest(model="tiny", n=3, seed=V.Seed(value=1)))
    colour = stub.Sample(V.SampleRequest(model=RGB, n=3, seed=V.Seed(value=1)))
    assert array(grey.images.tensor).shape == (3, 1, 28, 28)
    assert array(colour.images.tensor).shape == (3, *SHAPE)
    with Image.open(
        io.BytesIO(stub.Sample(V.SampleRequest(model="tiny", n=1, output=PNG_OUT)).images.png.images[0])
    ) as p:
        assert p.mode == "L" and p.size == (28, 28)
    # an image of one model's shape is refused by the other, naming the field and the shape it takes
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(V.EncodeRequest(model="tiny", images=tensor_images(colour_images(1)[0])))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images.tensor.shape" in error.value.details() and "[N, 1, 28, 28]" in error.value.details()


# --- every RPC on the colour model -----------------------------------------------------------------------


def test_encode_every_input_encoding_equals_torchscript(stub: VaeServiceStub, networks: dict) -> None:
    x = colour_images(4, seed=3)[0]
    mu, logvar = local(networks, "encoder", x)
    reply = stub.Encode(V.EncodeRequest(model=RGB, images=tensor_images(x)))
    np.testing.assert_allclose(array(reply.mean), mu, atol=1e-5)
    np.testing.assert_allclose(array(reply.log_variance), logvar, atol=1e-5)

    pixels = as_uint8(x)
    expected, _ = local(networks, "encoder", pixels.astype(np.float32) / 255)
    pictures = rgb_pictures(x)
    encodings = {
        "uint8 tensor": tensor_images(pixels),
        "RGB PNG": png_images([png_file(p) for p in pictures]),
        "RGBA PNG (alpha ignored)": png_images([png_file(_with_alpha(p)) for p in pictures]),
    }
    for name, images in encodings.items():
        got = array(stub.Encode(V.EncodeRequest(model=RGB, images=images)).mean)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)

    # a palette PNG is read through its palette
    palette = [p.quantize(colors=16) for p in pictures]
    through_palette = np.stack([np.asarray(p.convert("RGB")).transpose(2, 0, 1) for p in palette])
    got = array(stub.Encode(V.EncodeRequest(model=RGB, images=png_images([png_file(p) for p in palette]))).mean)
    np.testing.assert_allclose(got, local(networks, "encoder", through_palette / np.float32(255))[0], atol=1e-5)


def _with_alpha(picture: Image.Image) -> Image.Image:
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    return rgba


def test_a_grey_png_into_the_colour_model_has_its_gray_repeated(stub: VaeServiceStub, networks: dict) -> None:
    grey = as_uint8(stroke_images(2, seed=5, size=64)[0])  # [2, 64, 64]
    files = [png_file(Image.fromarray(g, mode="L")) for g in grey]
    got = array(stub.Encode(V.EncodeRequest(model=RGB, images=png_images(files))).mean)
    repeated = np.repeat(grey[:, None], 3, axis=1).astype(np.float32) / 255
    np.testing.assert_allclose(got, local(networks, "encoder", repeated)[0], atol=1e-5)
    # 16-bit gray too, at its full precision
    deep = (stroke_images(1, seed=6, size=64)[0][0] * 65535).round().astype(np.uint16)
    got = array(stub.Encode(V.EncodeRequest(model=RGB, images=png_images([png_file(Image.fromarray(deep))]))).mean)
    expected = np.repeat(deep[None, None], 3, axis=1).astype(np.float32) / 65535
    np.testing.assert_allclose(got, local(networks, "encoder", expected)[0], atol=1e-5)


def test_decode_tensor_uint8_and_png_outputs(stub: VaeServiceStub, networks: dict) -> None:
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    mean, _ = local(networks, "decoder", z)
    as_float = array(stub.Decode(V.DecodeRequest(model=RGB, latents=array_to_tensor(z))).images.tensor)
    assert as_float.shape == (5, *SHAPE) and as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, mean, atol=1e-5)
    uint8 = V.OutputOptions(format=V.IMAGE_FORMAT_UINT8)
    as_bytes = array(stub.Decode(V.DecodeRequest(model=RGB, latents=array_to_tensor(z), output=uint8)).images.tensor)
    assert as_bytes.shape == (5, *SHAPE) and as_bytes.dtype == np.uint8
    np.testing.assert_array_equal(as_bytes, as_uint8(as_float))
    pngs = stub.Decode(V.DecodeRequest(model=RGB, latents=array_to_tensor(z), output=PNG_OUT)).images
    assert_png_reply_matches(pngs, as_float)
    assert not np.array_equal(read_pngs(pngs)[:, 0], read_pngs(pngs)[:, 2])  # really colour, not gray in RGB


def test_decode_sample_mode_adds_gaussian_noise_per_channel(stub: VaeServiceStub, metadata: dict) -> None:
    z = np.zeros((64, 4), np.float32)
    request = V.DecodeRequest(model=RGB, latents=array_to_tensor(z), output=V.OutputOptions(mode=V.DECODE_MODE_SAMPLE),
                              seed=V.Seed(value=5))  # fmt: skip
    drawn = array(stub.Decode(request).images.tensor)
    mean = array(stub.Decode(V.DecodeRequest(model=RGB, latents=array_to_tensor(z))).images.tensor)
    assert drawn.shape == (64, *SHAPE) and drawn.min() >= 0.0 and drawn.max() <= 1.0
    np.testing.assert_array_equal(array(stub.Decode(request).images.tensor), drawn)
    inside = (mean > 0.3) & (mean < 0.7)  # away from the clipping at 0 and 1
    for channel, log_scale in enumerate(metadata["gaussian_log_scale"]):
        noise = (drawn - mean)[:, channel][inside[:, channel]]
        assert noise.std() == pytest.approx(math.exp(log_scale), rel=0.1)


def test_reconstruct_with_png_in_and_out(stub: VaeServiceStub, networks: dict) -> None:
    x = as_uint8(colour_images(3, seed=4)[0])
    files = png_images([png_file(p) for p in rgb_pictures(x / np.float32(255))])
    reply = stub.Reconstruct(V.ReconstructRequest(model=RGB, images=files))
    mu, _ = local(networks, "encoder", x / np.float32(255))
    np.testing.assert_allclose(array(reply.latents), mu, atol=1e-5)
    images = array(reply.images.tensor)
    assert images.shape == (3, *SHAPE)
    np.testing.assert_allclose(images, local(networks, "decoder", mu)[0], atol=1e-5)
    as_png = stub.Reconstruct(V.ReconstructRequest(model=RGB, images=files, output=PNG_OUT))
    assert_png_reply_matches(as_png.images, images)


def test_sample_and_sample_stream_in_every_format(stub: VaeServiceStub, networks: dict) -> None:
    seed = V.Seed(value=42)
    reply = stub.Sample(V.SampleRequest(model=RGB, n=20, seed=seed))  # more than one batch of 16
    images, latents = array(reply.images.tensor), array(reply.latents)
    assert images.shape == (20, *SHAPE) and latents.shape == (20, 4)
    np.testing.assert_allclose(images, local(networks, "decoder", latents)[0], atol=1e-5)
    assert_png_reply_matches(stub.Sample(V.SampleRequest(model=RGB, n=20, seed=seed, output=PNG_OUT)).images, images)
    chunks = list(stub.SampleStream(V.SampleStreamRequest(model=RGB, n=20, chunk_size=8, seed=seed, output=PNG_OUT)))
    assert [c.offset for c in chunks] == [0, 8, 16]
    np.testing.assert_array_equal(np.concatenate([array(c.latents) for c in chunks]), latents)
    np.testing.assert_array_equal(np.concatenate([read_pngs(c.images) for c in chunks]), as_uint8(images))
    streamed = list(stub.SampleStream(V.SampleStreamRequest(model=RGB, n=20, chunk_size=8, seed=seed)))
    np.testing.assert_allclose(np.concatenate([array(c.images.tensor) for c in streamed]), images, atol=1e-6)


def test_interpolate_between_png_endpoints(stub: VaeServiceStub, networks: dict) -> None:
    x = as_uint8(colour_images(2, seed=8)[0])
    a, b = (png_images([png_file(p)]) for p in rgb_pictures(x / np.float32(255)))
    request = V.InterpolateRequest(model=RGB, start=V.Endpoint(image=a), end=V.Endpoint(image=b), steps=5,
                                   method=V.INTERPOLATION_METHOD_LINEAR)  # fmt: skip
    reply = stub.Interpolate(request)
    latents, images = array(reply.latents), array(reply.images.tensor)
    mu, _ = local(networks, "encoder", x / np.float32(255))
    assert latents.shape == (5, 4) and images.shape == (5, *SHAPE)
    np.testing.assert_allclose(latents[[0, -1]], mu, atol=1e-5)
    np.testing.assert_allclose(images, local(networks, "decoder", latents)[0], atol=1e-5)
    request.output.CopyFrom(PNG_OUT)
    assert_png_reply_matches(stub.Interpolate(request).images, images)


def test_arithmetic_with_png_image_tensor_image_and_attribute(
    stub: VaeServiceStub, networks: dict, metadata: dict
) -> None:
    x = colour_images(2, seed=9)[0]
    file = png_images([png_file(rgb_pictures(x[:1])[0])])
    name = attribute_name(metadata)
    direction = np.asarray(metadata["attributes"][name]["vector"], np.float32)
    terms = [V.Term(weight=1.0, value=V.Endpoint(image=file)),
             V.Term(weight=-0.5, value=V.Endpoint(image=tensor_images(x[1:]))),
             V.Term(weight=2.0, value=V.Endpoint(attribute=name))]  # fmt: skip
    reply = stub.Arithmetic(V.ArithmeticRequest(model=RGB, terms=terms))
    first, _ = local(networks, "encoder", as_uint8(x[:1]) / np.float32(255))
    second, _ = local(networks, "encoder", x[1:])
    expected = first[0] - 0.5 * second[0] + 2.0 * direction
    np.testing.assert_allclose(array(reply.latent)[0], expected, atol=1e-5)
    images = array(reply.images.tensor)
    assert images.shape == (1, *SHAPE)
    np.testing.assert_allclose(images, local(networks, "decoder", expected[None])[0], atol=1e-5)
    as_png = stub.Arithmetic(V.ArithmeticRequest(model=RGB, terms=terms, output=PNG_OUT))
    assert_png_reply_matches(as_png.images, images)


def test_score_is_the_gaussian_likelihood_over_every_channel(
    stub: VaeServiceStub, networks: dict, metadata: dict
) -> None:
    x = as_uint8(colour_images(3, seed=10)[0])
    k, seed = 16, 7
    tensor_reply = stub.Score(V.ScoreRequest(model=RGB, images=tensor_images(x), importance_samples=k,
                                             seed=V.Seed(value=seed)))  # fmt: skip
    files = png_images([png_file(p) for p in rgb_pictures(x / np.float32(255))])
    png_reply = stub.Score(V.ScoreRequest(model=RGB, images=files, importance_samples=k, seed=V.Seed(value=seed)))
    assert len(tensor_reply.scores) == len(png_reply.scores) == 3
    for t, p in zip(tensor_reply.scores, png_reply.scores, strict=True):
        assert (t.elbo, t.reconstruction, t.kl, t.log_likelihood) == pytest.approx(
            (p.elbo, p.reconstruction, p.kl, p.log_likelihood), abs=1e-6)  # fmt: skip

    # the reconstruction term, computed here with torch from the same draws z = mu + sigma * eps
    pixels = torch.from_numpy(x.astype(np.float32) / 255)
    mu, logvar = local(networks, "encoder", pixels.numpy())
    eps = generator(seed).standard_normal((3, k, 4), dtype=np.float32)
    z = (mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps).reshape(3 * k, 4)
    mean, _ = local(networks, "decoder", z)
    scale = torch.tensor(metadata["gaussian_log_scale"], dtype=torch.float64).exp().reshape(3, 1, 1)
    log_px_z = torch.distributions.Normal(torch.from_numpy(mean).double(), scale).log_prob(
        pixels.double().repeat_interleave(k, dim=0)
    )
    expected = log_px_z.sum((1, 2, 3)).reshape(3, k).mean(1).numpy()
    got = np.array([s.reconstruction for s in tensor_reply.scores])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    for s in tensor_reply.scores:
        assert s.elbo == pytest.approx(s.reconstruction - s.kl, abs=1e-6) and s.kl >= 0
        assert math.isfinite(s.log_likelihood)


BAD = {
    "png-size": (lambda: V.EncodeRequest(model=RGB, images=png_images([encode_png(np.zeros((3, 28, 28), np.uint8))])),
                 "images.png.images[0]", "is 28x28; the model takes 64x64"),
    "second-png-size": (lambda: V.ReconstructRequest(model=RGB, images=png_images(
        [encode_png(np.zeros((3, 64, 64), np.uint8)), encode_png(np.zeros((1, 64, 32), np.uint8))])),
        "images.png.images[1]", "is 32x64; the model takes 64x64"),
    "endpoint-png-size": (lambda: V.InterpolateRequest(model=RGB, steps=3,
        start=V.Endpoint(image=png_images([encode_png(np.zeros((3, 16, 16), np.uint8))])),
        end=V.Endpoint(latent=array_to_tensor(np.zeros(4, np.float32)))),
        "start.image.png.images[0]", "is 16x16; the model takes 64x64"),
    "grey-tensor": (lambda: V.EncodeRequest(model=RGB, images=tensor_images(np.zeros((2, 1, 64, 64), np.float32))),
                    "images.tensor.shape", "must be [N, 3, 64, 64], got [2, 1, 64, 64]"),
    "channels-last": (lambda: V.ScoreRequest(model=RGB, images=tensor_images(np.zeros((1, 64, 64, 3), np.uint8))),
                      "images.tensor.shape", "must be [N, 3, 64, 64]"),
    "grey-model-size": (lambda: V.EncodeRequest(model="tiny", images=png_images([encode_png(np.zeros((3, 64, 64), np.uint8))])),
                        "images.png.images[0]", "is 64x64; the model takes 28x28"),
}  # fmt: skip
METHODS = {V.EncodeRequest: "Encode", V.ReconstructRequest: "Reconstruct", V.InterpolateRequest: "Interpolate",
           V.ScoreRequest: "Score"}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_wrong_shapes_are_refused_naming_the_field_and_the_size(stub: VaeServiceStub, case: str) -> None:
    make, field, problem = BAD[case]
    request = make()
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, METHODS[type(request)])(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert error.value.details().startswith(f"{field}: {problem}")


# --- the typed client and the CLI ------------------------------------------------------------------------


def test_client_round_trips_the_colour_model(server: ServerThread, metadata: dict) -> None:
    with VaeClient(server.address, model=RGB) as vae:
        assert vae.info().name == RGB
        generated = vae.sample(5, seed=3)
        assert generated.images.shape == (5, *SHAPE) and generated.seed == 3
        posterior = vae.encode(generated.images, samples=2, seed=1)
        assert posterior.mean.shape == (5, 4) and posterior.samples is not None
        np.testing.assert_allclose(vae.decode(generated.latents), generated.images, atol=1e-6)
        assert vae.reconstruct(generated.images).images.shape == (5, *SHAPE)
        row = vae.interpolate(generated.images[0], generated.images[1], steps=4)
        assert row.images.shape == (4, *SHAPE)
        assert vae.arithmetic([(1.0, generated.images[0]), (1.5, attribute_name(metadata))]).images.shape == (1, *SHAPE)
        chunks = list(vae.sample_stream(7, chunk_size=3, seed=3))
        assert [c.images.shape for c in chunks] == [(3, *SHAPE), (3, *SHAPE), (1, *SHAPE)]
        assert len(vae.score(generated.images, samples=4)) == 5


def test_client_sends_png_files_and_asks_for_png_replies(server: ServerThread, networks: dict) -> None:
    x = colour_images(2, seed=12)[0]
    files = [png_file(p) for p in rgb_pictures(x)]
    with VaeClient(server.address, model=RGB) as vae:
        posterior = vae.encode(files)
        expected, _ = local(networks, "encoder", as_uint8(x) / np.float32(255))
        np.testing.assert_allclose(posterior.mean, expected, atol=1e-5)
        assert vae.reconstruct(files).images.shape == (2, *SHAPE)
        assert vae.interpolate(files[0], files[1], steps=3).images.shape == (3, *SHAPE)
        assert vae.arithmetic([(1.0, files[0]), (-1.0, files[1])]).latents.shape == (1, 4)
        assert len(vae.score(files)) == 2
        assert vae.encode(as_uint8(x)).mean.shape == (2, 4)  # uint8 arrays travel as uint8
        floats = vae.sample(4, seed=2)
        as_png = vae.sample(4, seed=2, png=True)
        assert len(as_png.png) == 4 and floats.png == ()
        np.testing.assert_array_equal(read_pngs(list(as_png.png)), as_uint8(floats.images))
        np.testing.assert_array_equal(as_png.images, as_uint8(floats.images) / np.float32(255))
        np.testing.assert_array_equal(as_png.latents, floats.latents)
        for result in (vae.reconstruct(files, png=True), vae.interpolate(files[0], files[1], steps=3, png=True),
                       vae.arithmetic([(1.0, files[0])], png=True)):  # fmt: skip
            assert result.images.shape[1:] == SHAPE and len(result.png) == len(result.images)
            np.testing.assert_array_equal(read_pngs(list(result.png)), (result.images * 255).round())
        chunks = list(vae.sample_stream(5, chunk_size=2, seed=2, png=True))
        assert [len(c.png) for c in chunks] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate([c.images for c in chunks])[:4], as_png.images)


def _write_pngs(folder: Path, pictures: list[Image.Image], stem: str) -> list[Path]:
    paths = []
    for index, picture in enumerate(pictures):
        path = folder / f"{stem}{index}.png"
        picture.save(path)
        paths.append(path)
    return paths


def _assert_grid(path: Path, images: np.ndarray, cols: int) -> None:
    """The CLI's picture is an RGB PNG holding exactly these images, tiled and scaled 3x (within one level of
    rounding: the two computations ran in different batches)."""
    expected = tile(images, cols).repeat(3, axis=0).repeat(3, axis=1)
    with Image.open(path) as grid:
        assert grid.mode == "RGB" and grid.size == (expected.shape[1], expected.shape[0])
        pixels = np.asarray(grid)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_cli_writes_colour_grids_for_the_colour_model(
    server: ServerThread, metadata: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", server.address, "--model", RGB]
    x = colour_images(3, seed=13)[0]
    files = _write_pngs(tmp_path, rgb_pictures(x), "colour")
    grey_pixels = as_uint8(stroke_images(2, 14, 64)[0])
    greys = _write_pngs(tmp_path, [Image.fromarray(g) for g in grey_pixels], "grey")
    rgba = _write_pngs(tmp_path, [_with_alpha(p) for p in rgb_pictures(x[:1])], "rgba")
    inputs = read_cli_pngs(files + rgba + greys, SHAPE)
    np.testing.assert_array_equal(inputs[:3], as_uint8(x) / np.float32(255))
    np.testing.assert_array_equal(inputs[3], inputs[0])  # alpha ignored
    np.testing.assert_array_equal(inputs[4:], np.repeat(grey_pixels[:, None], 3, axis=1) / np.float32(255))

    with VaeClient(server.address, model=RGB) as vae:
        assert cli([*target, "--seed", "1", "sample", "--n", "9", "--out", str(tmp_path / "grid.png")]) == 0
        _assert_grid(tmp_path / "grid.png", vae.sample(9, seed=1).images, 3)
        assert cli([*target, "interpolate", str(files[0]), str(greys[0]), "--steps", "5",
                    "--out", str(tmp_path / "row.png")]) == 0  # fmt: skip
        _assert_grid(tmp_path / "row.png", vae.interpolate(inputs[0], inputs[4], steps=5).images, 5)
        assert cli([*target, "reconstruct", *map(str, files + rgba), "--out", str(tmp_path / "rec.png")]) == 0
        rows = np.concatenate([inputs[:4], vae.reconstruct(inputs[:4]).images])
        _assert_grid(tmp_path / "rec.png", rows, 4)
        assert cli([*target, "arithmetic", "--out", str(tmp_path / "a.png"), "--",
                    f"1:{files[0]}", f"-1:{files[1]}", f"1:{greys[1]}", f"1.5:{attribute_name(metadata)}"]) == 0  # fmt: skip
        terms = [(1.0, inputs[0]), (-1.0, inputs[1]), (1.0, inputs[5]), (1.5, attribute_name(metadata))]
        _assert_grid(tmp_path / "a.png", vae.arithmetic(terms).images, 1)
        assert cli([*target, "encode", *map(str, files), "--out", str(tmp_path / "z.npy")]) == 0
        z = np.load(tmp_path / "z.npy")
        np.testing.assert_allclose(z, vae.encode(inputs[:3]).mean, atol=1e-5)
        assert cli([*target, "decode", str(tmp_path / "z.npy"), "--out", str(tmp_path / "d.png")]) == 0
        _assert_grid(tmp_path / "d.png", vae.decode(z), 2)
    assert cli([*target, "--seed", "2", "stream", "--n", "5", "--chunk", "2", "--out-dir", str(tmp_path / "bulk")]) == 0
    assert np.load(tmp_path / "bulk" / "images_00000.npy").shape == (2, *SHAPE)
    capsys.readouterr()
    assert cli([*target, "score", *map(str, files + greys)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


def test_cli_reads_sixteen_bit_gray_at_full_precision(server: ServerThread, networks: dict, tmp_path: Path) -> None:
    deep = (stroke_images(1, seed=15, size=64)[0][0] * 65535).round().astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert cli(["--target", server.address, "--model", RGB, "encode", str(tmp_path / "deep.png"),
                "--out", str(tmp_path / "z.npy")]) == 0  # fmt: skip
    expected = np.repeat(deep[None, None], 3, axis=1).astype(np.float32) / 65535
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), local(networks, "encoder", expected)[0], atol=1e-5)


def test_cli_names_a_file_of_the_wrong_size(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (28, 28), (200, 10, 10)).save(small)
    assert cli(["--target", server.address, "--model", RGB, "reconstruct", str(small)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {small}: is 28x28; the model takes 64x64" and "Traceback" not in err
    missing = tmp_path / "missing.png"
    assert cli(["--target", server.address, "--model", RGB, "score", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: cannot read it")
