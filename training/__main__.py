"""Command line: `python -m training {train,evaluate,plots,export,python-repo,rehash}`; see `--help` of each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.config import ModelConfig, TrainConfig
from training.data import DATASETS, DatasetError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a conv VAE; checkpoints and metrics go to --out")
    d = TrainConfig()
    m = ModelConfig()
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    p.add_argument("--data-dir", help="IDX folder (mnist, fashion-mnist, idx), CelebA-layout folder "
                   "(celeba, emoji) or image folder (folder); overrides the default source")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/mnist"), help="run folder (checkpoints, metrics)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--min-lr", type=float, default=d.min_learning_rate)
    p.add_argument("--objective", choices=("elbo", "iwae", "mmd"), default=d.objective,
                   help="elbo; iwae (importance-weighted bound); mmd (MMD-VAE / InfoVAE, alpha=1)")  # fmt: skip
    p.add_argument("--train-samples", type=int, default=d.train_samples, help="importance samples for iwae")
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight (ELBO objective)")
    p.add_argument("--kl-warmup-epochs", type=float, default=d.kl_warmup_epochs, help="ramp beta from 0")
    p.add_argument("--free-bits", type=float, default=d.free_bits, help="min KL nats per latent dim")
    p.add_argument("--mmd-weight", type=float, default=d.mmd_weight, help="lambda: weight of MMD^2 (mmd objective)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--latent-dim", type=int, default=m.latent_dim)
    p.add_argument("--hidden-channels", type=int, default=m.hidden_channels)
    p.add_argument("--hidden-units", type=int, default=m.hidden_units)
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=m.likelihood)
    p.add_argument("--stages", type=int, default=m.stages, help="stride-2 stages (2 for 28x28, 4 for 64x64)")
    p.add_argument("--encoder-blocks", type=int, default=m.encoder_blocks, help="residual blocks per stage")
    p.add_argument("--decoder-blocks", type=int, default=m.decoder_blocks,
                   help="residual blocks per stage (each one slows decoding)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--stop-after-epoch", type=int, help="end this call after that epoch; continue with --resume")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from training.data import dataset_image_shape
    from training.train import train

    channels, size, _ = dataset_image_shape(args.dataset, args.data_dir)  # the model is built for its data
    config = TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        min_learning_rate=args.min_lr,
        objective=args.objective,
        train_samples=args.train_samples,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        free_bits=args.free_bits,
        mmd_weight=args.mmd_weight,
        ema_decay=args.ema_decay,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        model=ModelConfig(
            latent_dim=args.latent_dim,
            hidden_channels=args.hidden_channels,
            hidden_units=args.hidden_units,
            likelihood=args.likelihood,
            image_channels=channels,
            image_size=size,
            stages=args.stages,
            encoder_blocks=args.encoder_blocks,
            decoder_blocks=args.decoder_blocks,
        ),
    )
    best = train(config, args.out, args.resume, args.init_from, args.stop_after_epoch)
    print(f"best checkpoint: {best}")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test ELBO and importance-weighted NLL (nats)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--k", type=int, default=5000, help="importance samples per image (5000 to publish)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test images (quick looks)")
    p.add_argument("--seed", type=int, default=0, help="seeds the test binarization and the sampling")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (full float32 there: TF32 is switched off)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    import json

    import torch

    from training.data import fixed_binarization
    from training.evaluate import evaluate

    model, checkpoint, data = _load(args.checkpoint, args.threads)
    images = data.test.images[: args.limit]
    x = fixed_binarization(images, args.seed) if model.config.likelihood == "bernoulli" else torch.from_numpy(images)
    torch.manual_seed(args.seed)
    if args.device != "cpu":  # the published figure is a float32 one, whatever the card defaults to
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    result = evaluate(model.to(args.device), x.to(args.device), args.k)
    payload = {**result.to_dict(), "dataset": data.name, "split": "test", "binarization_seed": args.seed,
               "checkpoint_epoch": checkpoint.get("epoch"), "device": args.device}  # fmt: skip
    text = json.dumps(payload, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _add_plots(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plots", help="PNG pictures: reconstructions, samples, interpolations, latent map, curves")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--metrics", type=Path, nargs="*", default=[], help="metrics.csv files for the loss curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(handler=_run_plots)


def _run_plots(args: argparse.Namespace) -> None:
    from training import plots

    model, _, data = _load(args.checkpoint, args.threads)
    test, out = data.test, args.out
    written = [
        plots.plot_reconstructions(model, test.images[:64], out / "reconstructions.png"),
        plots.plot_samples(model, out / "samples.png", seed=args.seed),
        plots.plot_interpolations(model, test.images[100:110], out / "interpolations.png"),
        plots.plot_latent_map(model, test.images[:5000], test.labels[:5000], list(data.label_names),
                              out / "latent_map.png"),
    ]  # fmt: skip
    if model.config.latent_dim == 2:
        written.append(plots.plot_manifold(model, out / "manifold.png"))
    else:  # PCA shows only two directions of a larger latent; t-SNE keeps the neighbourhoods
        written.append(plots.plot_latent_tsne(model, test.images, test.labels, list(data.label_names),
                                              out / "latent_tsne.png", seed=args.seed))  # fmt: skip
    written.append(_attribute_picture(model, data, out / "attributes.png"))
    metrics = args.metrics or [p for p in [args.checkpoint.parent / "metrics.csv"] if p.exists()]
    if metrics:
        written.append(plots.plot_loss_curves(metrics, out / "loss_curves.png"))
    for path in written:
        print(path)


# Binary attributes swept in the attribute picture when a dataset has them (CelebA's names, then the emoji set's).
SWEPT_ATTRIBUTES = ("Eyeglasses", "Smiling", "Male", "Glasses", "Woman", "Technologist")


def _attribute_picture(model, data, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Attribute vectors (from 10k training images) applied to three test images: thickness and slant for
    MNIST-like data, up to three binary attributes (`SWEPT_ATTRIBUTES`) for data labelled like CelebA."""
    import torch

    from training import plots
    from training.attributes import compute_attributes
    from training.data import fixed_binarization

    images, labels = data.train.images[:10000], data.train.labels[:10000]
    inputs = fixed_binarization(images) if model.config.likelihood == "bernoulli" else torch.from_numpy(images)
    binary = None if data.train.attributes is None else data.train.attributes[:10000]
    attributes = compute_attributes(model, images, inputs, labels, data.label_names, binary, data.attribute_names)
    found = {a.name: a.vector for a in attributes}
    wanted = ("thickness", "slant") if binary is None else SWEPT_ATTRIBUTES
    vectors = {name: found[name] for name in wanted if name in found}
    if binary is not None:
        vectors = dict(list(vectors.items())[:3])
    return plots.plot_attribute_sweeps(model, data.test.images[[3, 2, 1]], vectors, path)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="TorchScript + config.pbtxt + metadata into a Triton model repository")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    p.add_argument("--name", default="mnist", help="VAE name: Triton models <name>_encoder, <name>_decoder")
    p.add_argument("--variant", choices=("libtorch", "python"), default="libtorch",
                   help="libtorch: pytorch_libtorch platform; python: Python backend, same file")  # fmt: skip
    p.add_argument("--instance-kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU")
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--evaluation", type=Path, help="JSON written by `evaluate --out`, stored in the metadata")
    p.add_argument("--attribute-images", type=int, help="use only the first N training images for attributes")
    p.add_argument("--version", default="1", help="the version to write (a positive integer); the model's other "
                   "versions are kept (docs/operations.md \"Updating models\")")  # fmt: skip
    p.add_argument(
        "--no-default",
        action="store_true",
        help="add the version without making it the default (a canary: route traffic to it by admin)",
    )
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    import json

    from training.export import export_repository

    model, checkpoint, _ = _load(args.checkpoint, 0, need_data=False)
    evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
    path = export_repository(model, checkpoint, args.repo, args.name, args.variant, args.instance_kind,
                             args.max_batch_size, evaluation, args.attribute_images, args.version,
                             not args.no_default)  # fmt: skip
    print(path)


def _add_python_repo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("python-repo", help="derive a Python-backend repository from an exported one")
    p.add_argument("--source", type=Path, default=Path("deploy/model_repository"))
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_python_repo)


def _run_python_repo(args: argparse.Namespace) -> None:
    from training.export import derive_python_variant

    for path in derive_python_variant(args.source, args.out):
        print(path)


def _add_rehash(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rehash", help="record the SHA-256 of every network file in a repository's metadata")
    p.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    p.add_argument("--replace", action="store_true", help="overwrite digests the files no longer match")
    p.set_defaults(handler=_run_rehash)


def _run_rehash(args: argparse.Namespace) -> None:
    from training.export import restamp
    from vaecore.repository import RepositoryError, metadata_files

    paths = metadata_files(args.repo)
    if not paths:
        raise DatasetError(f"no model metadata in {args.repo}")
    for path in paths:
        try:
            print(restamp(args.repo, path, args.replace))
        except (RepositoryError, OSError) as exc:
            raise DatasetError(f"{exc} (--replace overwrites a recorded digest)") from exc


def _add_versions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="list a model's versions; set its default version or remove one")
    p.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    p.add_argument("--name", required=True)
    p.add_argument("--set-default", metavar="VERSION", help="the version requests naming none get")
    p.add_argument("--remove", metavar="VERSION", help="drop a version from the metadata (its files stay)")
    p.set_defaults(handler=_run_versions)


def _run_versions(args: argparse.Namespace) -> None:
    from training.triton_repo import set_version_policy
    from vaecore.repository import (
        RepositoryError,
        metadata_path,
        network_dir,
        parse_versions,
        remove_version,
        set_default_version,
    )

    try:
        if args.set_default:
            set_default_version(args.repo, args.name, args.set_default)
        if args.remove:
            remove_version(args.repo, args.name, args.remove)
        model = parse_versions(metadata_path(args.repo, args.name))
    except (RepositoryError, OSError, ValueError) as exc:
        raise DatasetError(str(exc)) from exc
    for network in (model.default.encoder, model.default.decoder):
        if (network_dir(args.repo, network) / "config.pbtxt").is_file():
            set_version_policy(network_dir(args.repo, network), model.versions)
    for version, spec in sorted(model.versions.items(), key=lambda item: int(item[0])):
        mark = " (default)" if version == model.default_version else ""
        print(f"{model.name} version {version}{mark}: latent space {spec.latent_space or 'unknown'}, "
              f"test NLL {spec.test_nll or 'unknown'}")  # fmt: skip


def _load(checkpoint_path: Path, threads: int, need_data: bool = True):  # type: ignore[no-untyped-def]
    """(model, checkpoint, dataset) for the evaluation-side commands."""
    import torch

    from training.config import TrainConfig
    from training.data import load_dataset
    from training.model import load_checkpoint

    if threads > 0:
        torch.set_num_threads(threads)
    if not checkpoint_path.exists():
        raise DatasetError(f"checkpoint {checkpoint_path} does not exist; train first (python -m training train)")
    model, checkpoint = load_checkpoint(checkpoint_path)
    if not need_data:
        return model, checkpoint, None
    config = TrainConfig.from_dict(checkpoint["train_config"])
    return model, checkpoint, load_dataset(config.dataset, config.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_plots, _add_export, _add_python_repo, _add_rehash, _add_versions):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
