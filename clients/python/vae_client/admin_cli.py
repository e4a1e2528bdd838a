"""`python -m service.cli admin ...`: the admin service from a terminal (docs/model-lifecycle.md).

admin index                               every model, its versions and their states, the routing
admin reload                              re-read the repository now (as SIGHUP does)
admin load MODEL VERSION                  load a version the repository lists
admin unload MODEL VERSION                drain and unload one
admin default MODEL VERSION               send unpinned traffic to one version
admin split MODEL 1=0.9 2=0.1             share unpinned traffic by weight (a canary); no weights: clear it
admin rollback MODEL                      the routing before the last change

The admin token comes from --admin-token-file (default: env VAE_ADMIN_TOKEN, the token itself).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any

import grpc

from vae_client.credentials import SecurityError, bearer_metadata, read_client_token
from vae_client.proto_gen.vae.v1 import admin_pb2, admin_pb2_grpc, vae_pb2

ADMIN_TOKEN_ENV = "VAE_ADMIN_TOKEN"


def add_admin_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="the admin service: versions, routing, reloads (needs the admin token)")
    p.add_argument(
        "--admin-token-file", help=f"file whose first token is the admin token (default: env {ADMIN_TOKEN_ENV})"
    )
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("index")
    actions.add_parser("reload")
    for name in ("load", "unload", "default"):
        a = actions.add_parser(name)
        a.add_argument("model")
        a.add_argument("version")
    a = actions.add_parser("split")
    a.add_argument("model")
    a.add_argument("weights", nargs="*", help="VERSION=WEIGHT ...")
    a = actions.add_parser("rollback")
    a.add_argument("model")


class AdminArgumentError(ValueError):
    """An admin command line that cannot be sent; the message names the argument."""


def _weights(items: Iterable[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        version, sep, weight = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[version] = float(weight)
        except ValueError:
            raise AdminArgumentError(f"a split weight is VERSION=WEIGHT (a number), got {item!r}") from None
    return weights


def describe(info: vae_pb2.ModelInfo) -> list[str]:
    """One line per version: state, traffic share, latent space, and why when it failed."""
    lines = [f"{info.name}: default version {info.default_version}"]
    for v in info.versions:
        state = vae_pb2.VersionState.Name(v.state).removeprefix("VERSION_STATE_").lower()
        why = f" ({v.message})" if v.message else ""
        lines.append(f"  version {v.version}: {state}, {v.traffic_share:.0%} of unpinned traffic, "
                     f"latent space {v.latent_space or 'unknown'}{why}")  # fmt: skip
    return lines


def run_admin(args: argparse.Namespace, channel: grpc.Channel) -> list[str]:
    """The lines to print for one admin action; grpc.RpcError for a refused call."""
    token = read_client_token(args.admin_token_file) if args.admin_token_file else os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise SecurityError(f"the admin service needs the admin token: --admin-token-file or env {ADMIN_TOKEN_ENV}")
    stub = admin_pb2_grpc.ModelAdminServiceStub(channel)
    call = {"metadata": bearer_metadata(token), "timeout": 300}
    if args.action == "index":
        reply = stub.RepositoryIndex(admin_pb2.RepositoryIndexRequest(), **call)
        return [line for info in reply.models for line in describe(info)]
    if args.action == "reload":
        reloaded = stub.Reload(admin_pb2.ReloadRequest(), **call)
        return list(reloaded.changes) or ["no change"]
    method, request = _change(stub, args)
    return describe(method(request, **call).info)


def _change(stub: admin_pb2_grpc.ModelAdminServiceStub, args: argparse.Namespace) -> tuple[Any, Any]:
    """The admin method and request of a change to one model's versions or routing."""
    if args.action == "split":
        return stub.SetTrafficSplit, admin_pb2.SetTrafficSplitRequest(model=args.model, weights=_weights(args.weights))
    if args.action == "rollback":
        return stub.Rollback, admin_pb2.RollbackRequest(model=args.model)
    versioned = {"model": args.model, "model_version": args.version}
    if args.action == "load":
        return stub.LoadVersion, admin_pb2.LoadVersionRequest(**versioned)
    if args.action == "unload":
        return stub.UnloadVersion, admin_pb2.UnloadVersionRequest(**versioned)
    return stub.SetDefaultVersion, admin_pb2.SetDefaultVersionRequest(**versioned)
