"""The published retry policy (vae_client/service_config.json): on a plain grpcio channel, and in the typed client.

The server here is a fake (`FirstAttemptFails`): it ends the first attempt of each call with a status of its own
choosing, because the cancellations gRPC's core makes (tests/service/test_deadline_burst.py, against the real
service) cannot be made to happen on demand. Real gRPC on both sides, over loopback.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.config import Settings, load_settings
from tests.service.harness import serving
from vae_client.client import VaeClient
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.retry import RETRY_SERVICE_CONFIG, RETRYABLE_CODES, retry_options

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "/vae.v1.VaeService/Sample"
ADMIN_RELOAD = "/vae.v1.ModelAdminService/Reload"


class FirstAttemptFails:
    """A fake server: the first attempt of every call ends with `code`; a retry (gRPC's grpc-previous-rpc-attempts
    header) gets a SampleResponse with a seed the server drew, as the real service does for an unseeded request."""

    def __init__(self, code: grpc.StatusCode, hold_s: float = 0.0) -> None:
        self.code, self.hold_s = code, hold_s
        self.attempts: list[str] = []  # per attempt: the header's value, "" on a first attempt
        self.seeds: list[int] = []  # the seed of each reply sent
        self._server = grpc.server(ThreadPoolExecutor(8))
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._handle) for name in ("Sample",)}
        self._server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("vae.v1.VaeService", handlers),
            grpc.method_handlers_generic_handler("vae.v1.ModelAdminService", {"Reload": handlers["Sample"]}),
        ))  # fmt: skip
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        previous = dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts", "")
        self.attempts.append(str(previous))
        if self.hold_s:
            time.sleep(self.hold_s)
        if not previous:
            context.abort(self.code, "fake: first attempt refused")
        zeros = array_to_tensor(np.zeros((1, 1, 2, 2), np.float32))
        self.seeds.append(random.getrandbits(63))
        reply = vae_pb2.SampleResponse(images=vae_pb2.Images(tensor=zeros), latents=array_to_tensor(np.zeros((1, 2))),
                                       seed=self.seeds[-1], model="fake")  # fmt: skip
        return reply.SerializeToString()


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FirstAttemptFails]:
    code, hold_s = getattr(request, "param", (grpc.StatusCode.CANCELLED, 0.0))
    server = FirstAttemptFails(code, hold_s)
    server._server.start()
    try:
        yield server
    finally:
        server._server.stop(0)


def _call(target: str, method: str, options: list, timeout: float = 10) -> bytes:
    with grpc.insecure_channel(target, options=options) as channel:
        return bytes(channel.unary_unary(method)(vae_pb2.SampleRequest(n=1).SerializeToString(), timeout=timeout))


def test_the_policy_covers_the_vae_service_alone_and_retries_what_the_server_cancelled_or_refused() -> None:
    config = json.loads(RETRY_SERVICE_CONFIG)
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "vae.v1.VaeService"}]  # not the admin service, not health
    assert RETRYABLE_CODES == ("CANCELLED", "UNAVAILABLE")
    assert method["retryPolicy"]["maxAttempts"] == 5  # gRPC's ceiling: the first attempt and 4 retries
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}


@pytest.mark.parametrize("fake", [(grpc.StatusCode.CANCELLED, 0.0), (grpc.StatusCode.UNAVAILABLE, 0.0)],
                         indirect=True, ids=["CANCELLED", "UNAVAILABLE"])  # fmt: skip
def test_a_plain_grpcio_channel_with_the_policy_gets_its_answer_after_the_fake_refused_it(
    fake: FirstAttemptFails,
) -> None:
    reply = vae_pb2.SampleResponse.FromString(_call(fake.target, SAMPLE, retry_options()))
    assert reply.model == "fake" and fake.attempts == ["", "1"]
    with pytest.raises(grpc.RpcError) as refused:  # a channel without the policy: the call is lost
        _call(fake.target, SAMPLE, [])
    assert refused.value.code() == fake.code


@pytest.mark.parametrize("fake", [(grpc.StatusCode.INVALID_ARGUMENT, 0.0)], indirect=True)
def test_a_status_outside_the_policy_is_not_retried(fake: FirstAttemptFails) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(fake.target, SAMPLE, retry_options())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fake.attempts == [""]


def test_the_admin_service_is_not_retried(fake: FirstAttemptFails) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(fake.target, ADMIN_RELOAD, retry_options())
    assert refused.value.code() == grpc.StatusCode.CANCELLED and fake.attempts == [""]


@pytest.mark.parametrize("fake", [(grpc.StatusCode.CANCELLED, 1.0)], indirect=True)
def test_a_call_its_caller_cancels_is_never_retried(fake: FirstAttemptFails) -> None:
    with grpc.insecure_channel(fake.target, options=retry_options()) as channel:
        future = channel.unary_unary(SAMPLE).future(b"", timeout=10)
        reached = time.monotonic() + 10
        while not fake.attempts and time.monotonic() < reached:
            time.sleep(0.01)
        assert fake.attempts, "the call never reached the fake server"
        assert future.cancel()
        time.sleep(1.5)  # the held attempt ends (with CANCELLED) long before this; a retry would be here by now
    assert fake.attempts == [""]


def test_the_typed_client_retries_and_reports_the_seed_of_the_attempt_that_answered(fake: FirstAttemptFails) -> None:
    with VaeClient(fake.target, timeout_s=10) as client:
        generated = client.sample(1)  # unseeded: the answering attempt's server draws the seed
    assert fake.attempts == ["", "1"] and fake.seeds == [generated.seed]
    with VaeClient(fake.target, timeout_s=10, retries=False) as client, pytest.raises(grpc.RpcError) as refused:
        client.sample(1)
    assert refused.value.code() == grpc.StatusCode.CANCELLED


def test_the_typed_client_retries_calls_from_many_threads_at_once(fake: FirstAttemptFails) -> None:
    """40 concurrent calls, each refused once, all answered: within the throttle's headroom (100 tokens, retries
    stop at 50, one token per failure), a burst of refusals is retried."""
    with VaeClient(fake.target, timeout_s=20) as client, ThreadPoolExecutor(8) as pool:
        seeds = list(pool.map(lambda _: client.sample(1).seed, range(40)))
    assert len(seeds) == 40 and fake.attempts.count("") == 40 and fake.attempts.count("1") == 40


def _section(markdown: Path, heading: str, fence: str) -> str:
    """The first ```fence block after `heading` in `markdown`."""
    text = markdown.read_text()
    after = text[text.index(heading) :]
    match = re.search(rf"```{fence}\n(.*?)```", after, re.S)
    assert match, f"no {fence} block after {heading!r} in {markdown.name}"
    return match.group(1)


def test_the_readme_publishes_exactly_the_file_the_client_uses() -> None:
    assert json.loads(_section(ROOT / "README.md", "## Retries", "json")) == json.loads(RETRY_SERVICE_CONFIG)


def test_the_kubernetes_docs_channel_runs_against_a_real_server(model_repository: Path) -> None:
    """deploy/README.md's client block, as users copy it, its headless-Service target swapped for a real server."""
    block = _section(ROOT / "deploy" / "README.md", "## Calling it", "python")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, torch_threads=1)
    with serving(settings) as server:
        target = f"dns:///{server.address}"
        code = block.replace('"dns:///vae-service-headless.vae-serving.svc.cluster.local:50051"', repr(target))
        assert code != block
        scope: dict = {}
        exec(compile(code, "deploy/README.md", "exec"), scope)
        scope["channel"].close()
    assert {m.name for m in scope["reply"].models} == {"tiny", "tiny2"}
    config = json.loads(scope["SERVICE_CONFIG"])
    assert config["methodConfig"] == json.loads(RETRY_SERVICE_CONFIG)["methodConfig"]


def test_the_server_holds_one_fixed_backlog_limit_unless_told_to_keep_grpcs() -> None:
    from service.server import server_options

    ours = dict(server_options(Settings()))
    assert ours["grpc.server.max_pending_requests"] == ours["grpc.server.max_pending_requests_hard_limit"] == 20000
    names = {name for name, _ in server_options(Settings(max_pending_calls=0))}
    assert not names & {"grpc.server.max_pending_requests", "grpc.server.max_pending_requests_hard_limit"}
    with pytest.raises(SystemExit):
        load_settings(["--max-pending-calls", "-1"], {})
