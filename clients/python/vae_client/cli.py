"""Command line for people: `vae [--target HOST:PORT] COMMAND ...` (also `python -m vae_client.cli` and
`python -m service.cli`).

models                                   list served models
sample --n 64 --out grid.png             a grid of samples from the prior
interpolate a.png b.png --out row.png    a row from one image to another
reconstruct a.png b.png --out r.png      inputs above their reconstructions
arithmetic 1:a.png -1:b.png 1.5:thickness --out x.png
score a.png b.png                        ELBO and log p(x) per image (nats)
encode a.png --out z.npy                 latents, their latent space stamped beside them (z.npy.json)
decode z.npy --out d.png                 images of latents; the stamp beside them is sent back and checked
admin index | reload | load | unload | default | split | rollback    the admin service (service/admin_cli.py)

Pictures are written in the model's colours: grayscale for a one-channel model, RGB for a colour one. Input PNGs
are read by the server's rules (docs/operations.md "Limits"): RGB, RGBA (alpha ignored) and palette files for a colour
model, a grayscale file's gray repeated in R, G and B; 16-bit files at full precision; each file must be the
model's size, or the command stops naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
import numpy as np

from vae_client.admin_cli import AdminArgumentError, add_admin_parser, run_admin
from vae_client.client import Latents, VaeClient, describe_error
from vae_client.codecs import decode_png
from vae_client.credentials import SecurityError, read_client_token
from vae_client.errors import InvalidArgument
from vae_client.images import save_grid as save

TOKEN_ENV = "VAE_CLIENT_TOKEN"


class InputError(Exception):
    """An input file the command cannot use; the message names it."""


def read_png(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    """float32 [C, H, W] in [0, 1], converted to the model's channels by the same rules the server applies to
    PNG inputs (`vae_client.codecs.decode_png`); a file of the wrong size or an unreadable one is an `InputError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return decode_png(data, image_shape, str(path))
    except InvalidArgument as exc:
        raise InputError(str(exc)) from None


def read_pngs(paths: list[Path], image_shape: tuple[int, int, int]) -> np.ndarray:
    return np.stack([read_png(p, image_shape) for p in paths])


def save_grid(images: np.ndarray, cols: int, path: Path) -> None:
    save(images, cols, path)
    print(f"wrote {path}")


def stamp_path(path: Path) -> Path:
    """The stamp beside a `.npy` file of latents: `latents.npy` -> `latents.npy.json`."""
    return path.with_name(path.name + ".json")


def save_latents(path: Path, latents: Latents, model_version: str = "") -> None:
    """The latents as `.npy`, their stamp beside them (`stamp_path`), so `decode` sends it back."""
    np.save(path, np.asarray(latents))
    stamp = {"latent_space": latents.latent_space, "model_version": model_version}
    stamp_path(path).write_text(json.dumps(stamp) + "\n")


def load_latents(path: Path) -> Latents:
    """A `.npy` file of latents, stamped with the latent space beside it (unstamped when there is none)."""
    try:
        values = np.load(path).astype(np.float32)
        stamp = json.loads(stamp_path(path).read_text()) if stamp_path(path).is_file() else {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    return Latents(values, str(stamp.get("latent_space", "")))


def _value(text: str, image_shape: tuple[int, int, int]) -> np.ndarray | str:
    return read_png(Path(text), image_shape) if text.lower().endswith(".png") else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--model", default="", help="model name (default: the server's default)")
    parser.add_argument("--model-version", default="", help="one version of the model (default: the server's routing)")
    parser.add_argument("--seed", type=int)
    secure = parser.add_argument_group('security (docs/operations.md "Security")')
    secure.add_argument("--tls", action="store_true", help="TLS, verifying the server against the system's roots")
    secure.add_argument("--tls-ca-file", help="PEM CA bundle to verify the server with (implies TLS)")
    secure.add_argument("--tls-cert-file", help="PEM client certificate, for mutual TLS (with --tls-key-file)")
    secure.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    secure.add_argument("--tls-server-name", help="name the server's certificate must carry (default: the target's)")
    secure.add_argument("--token-file", help="file whose first token is sent as `authorization: Bearer` "
                        "(default: env VAE_CLIENT_TOKEN, the token itself)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models")
    sub.add_parser("info")
    p = sub.add_parser("encode")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("latents.npy"))
    p = sub.add_parser("decode")
    p.add_argument("latents", type=Path, help=".npy file of shape [N, latent_dim]")
    p.add_argument("--out", type=Path, default=Path("decoded.png"))
    p = sub.add_parser("stream")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--chunk", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out-dir", type=Path, default=Path("samples"))
    p = sub.add_parser("sample")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p = sub.add_parser("interpolate")
    p.add_argument("start", type=Path)
    p.add_argument("end", type=Path)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--linear", action="store_true", help="linear instead of spherical")
    p.add_argument("--out", type=Path, default=Path("interpolation.png"))
    p = sub.add_parser("reconstruct")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("reconstructions.png"))
    p = sub.add_parser("arithmetic", help="terms WEIGHT:IMAGE.png or WEIGHT:ATTRIBUTE")
    p.add_argument("terms", nargs="+")
    p.add_argument("--out", type=Path, default=Path("arithmetic.png"))
    p = sub.add_parser("score")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--samples", type=int, default=0)
    add_admin_parser(sub)
    args = parser.parse_args(argv)

    try:
        token = read_client_token(args.token_file) if args.token_file else os.environ.get(TOKEN_ENV) or None
        # admin calls carry the admin token instead of the caller's (service/admin_cli.py)
        client = VaeClient(args.target, args.model, tls=args.tls, tls_ca_file=args.tls_ca_file,
                           tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                           tls_server_name=args.tls_server_name, token=None if args.command == "admin" else token,
                           model_version=args.model_version)  # fmt: skip
        with client as vae:
            if args.command == "admin":
                print("\n".join(run_admin(args, vae.channel)))
                return 0
            if args.command == "models":
                for m in vae.list_models():
                    nll = f"{m.test_nll:.2f} nats (k={m.test_nll_samples})" if m.test_nll else "unknown"
                    print(
                        f"{m.name}: latent {m.latent_dim}, image {list(m.image_shape)}, {m.likelihood}, "
                        f"dataset {m.dataset}, test NLL {nll}, attributes {', '.join(m.attribute_names)}, "
                        f"versions {', '.join(v.version for v in m.versions)} (default {m.default_version})"
                    )
                return 0
            info = vae.info()
            c, h, w = info.image_shape
            shape = (c, h, w)
            if args.command == "info":
                print(info)
            elif args.command == "encode":
                posterior = vae.encode(read_pngs(args.images, shape))
                save_latents(args.out, posterior.mean, posterior.model_version)
                np.save(args.out.with_suffix(".logvar.npy"), posterior.log_variance)
                print(f"wrote {args.out} {list(posterior.mean.shape)} (latent space {posterior.latent_space})")
            elif args.command == "decode":
                latents = load_latents(args.latents)
                save_grid(vae.decode(latents, seed=args.seed), int(np.ceil(np.sqrt(len(latents)))), args.out)
            elif args.command == "stream":
                args.out_dir.mkdir(parents=True, exist_ok=True)
                done = 0
                for index, chunk in enumerate(vae.sample_stream(args.n, args.chunk, args.temperature, args.seed)):
                    np.save(args.out_dir / f"images_{index:05d}.npy", chunk.images)
                    save_latents(args.out_dir / f"latents_{index:05d}.npy", chunk.latents, chunk.model_version)
                    done += len(chunk.images)
                    print(f"\r{done}/{args.n} images (seed {chunk.seed})", end="", file=sys.stderr, flush=True)
                print(file=sys.stderr)
            elif args.command == "sample":
                result = vae.sample(args.n, args.temperature, seed=args.seed)
                print(f"seed {result.seed}")
                save_grid(result.images, int(np.ceil(np.sqrt(args.n))), args.out)
            elif args.command == "interpolate":
                start, end = read_png(args.start, shape), read_png(args.end, shape)
                result = vae.interpolate(start, end, args.steps, spherical=not args.linear, seed=args.seed)
                save_grid(result.images, args.steps, args.out)
            elif args.command == "reconstruct":
                inputs = read_pngs(args.images, shape)
                result = vae.reconstruct(inputs, seed=args.seed)
                save_grid(np.concatenate([inputs, result.images]), len(inputs), args.out)
            elif args.command == "arithmetic":
                terms = []
                for term in args.terms:
                    weight, _, value = term.partition(":")
                    terms.append((float(weight), _value(value, shape)))
                save_grid(vae.arithmetic(terms, seed=args.seed).images, 1, args.out)
            elif args.command == "score":
                inputs = read_pngs(args.images, shape)
                print(f"{'image':30} {'elbo':>10} {'recon':>10} {'kl':>8} {'log p(x)':>10}")
                for path, s in zip(args.images, vae.score(inputs, args.samples, args.seed), strict=True):
                    print(f"{path!s:30} {s.elbo:10.2f} {s.reconstruction:10.2f} {s.kl:8.2f} {s.log_likelihood:10.2f}")
    except (SecurityError, InputError, AdminArgumentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
