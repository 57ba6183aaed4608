"""Endpoints a server allows: what is refused (after DNS, on redirects), what the operator names,
and that a server's policy reaches its providers and its workers.

Every server here is on 127.0.0.1: loopback plays "private" when the policy is that of a server
listening beyond loopback (public hosts only).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ea_core.errors import ConfigError, LMError
from ea_core.llm.endpoints import POLICY_ENV, EndpointPolicy, EndpointRefused, is_loopback_host, refused_address
from ea_core.llm.spec import LMSpec
from ea_core.runconfig import RunConfig
from ea_core.runs import RunManager, _worker_env
from tests.scripted_server import provider_for, scripted_server  # noqa: F401  (a fixture)

GOLD = {"I love it": "positive", "I hate it": "negative"}
LABELS = ["positive", "negative"]


class Redirector:
    """An HTTP server on 127.0.0.1 that answers every request with a 307 to `target` + its path."""

    def __init__(self, target: str) -> None:
        outer = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def _redirect(self) -> None:
                outer.hits += 1
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                self.send_response(307)
                self.send_header("Location", target.rstrip("/") + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect  # noqa: N815

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> "Redirector":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_on_loopback_calls_anything_beyond_it_public_hosts_only():
    assert EndpointPolicy.for_server("127.0.0.1").allow_any
    assert EndpointPolicy.for_server("localhost").allow_any
    assert EndpointPolicy.for_server("0.0.0.0", allow_any=True).allow_any
    public = EndpointPolicy.for_server("0.0.0.0")
    assert public.restricts and public.public and "public hosts only" in public.describe()
    named = EndpointPolicy.for_server("0.0.0.0", ["api.openai.com", "http://10.0.0.5:8000/v1"])
    assert not named.public and named.describe() == "This server calls only api.openai.com, http://10.0.0.5:8000/v1."
    assert is_loopback_host("::1") and not is_loopback_host("0.0.0.0") and not is_loopback_host("10.0.0.1")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.100.100.200", "0.0.0.0", "::1", "fd00:ec2::254", "fe80::1",
                                     "::ffff:127.0.0.1", "224.0.0.1"])
def test_private_loopback_link_local_and_metadata_addresses_are_not_public(address):
    assert refused_address(address) is not None


def test_what_the_operator_names_is_allowed_whatever_its_address():
    policy = EndpointPolicy.parse(["localhost:8000", "*.example.internal", "http://127.0.0.1:9000/v1", "10.0.0.0/8"])
    assert policy.refusal("http", "localhost", 8000, "/v1") is None
    assert policy.refusal("http", "localhost", 8001, "/v1") is not None
    assert policy.refusal("https", "llm.example.internal", 443, "/v1", addresses=["10.9.9.9"]) is None
    assert policy.refusal("http", "127.0.0.1", 9000, "/v1/chat/completions") is None
    assert policy.refusal("http", "127.0.0.1", 9000, "/v2/chat/completions", addresses=["127.0.0.1"]) is not None
    assert policy.refusal("http", "somehost", 80, "/", addresses=["10.2.3.4"]) is None  # inside 10.0.0.0/8
    assert policy.refusal("http", "somehost", 80, "/", addresses=["10.2.3.4", "192.168.0.1"]) is not None
    assert policy.refusal("file", "localhost", 8000, "/") is not None
    with pytest.raises(ConfigError):
        EndpointPolicy.parse(["ftp://x"])
    with pytest.raises(EndpointRefused, match="does not resolve"):
        EndpointPolicy.parse(["public"]).check_url("http://no-such-host.invalid/v1")
    # What a server tells its workers reads back the same; a garbled one refuses everything.
    assert EndpointPolicy.from_env({POLICY_ENV: policy.to_json()}).allowed == policy.allowed
    assert EndpointPolicy.from_env({POLICY_ENV: "{not json"}).refusal("http", "x", 80, "/", addresses=["8.8.8.8"])
    assert EndpointPolicy.from_env({}).allow_any


def test_a_refused_endpoint_is_refused_before_any_request(scripted_server):
    srv = scripted_server(GOLD)
    public = EndpointPolicy.for_server("0.0.0.0")
    provider = provider_for(srv, endpoint_policy=public)
    with pytest.raises(LMError, match="does not call .*loopback"):
        provider.classify([("I love it", None)], LABELS)
    with pytest.raises(LMError, match="does not call"):
        provider.check_endpoint()
    assert srv.count == 0 and not srv.requests
    with pytest.raises(EndpointRefused):
        LMSpec.parse("openai", model="m", base_url=srv.url).check_endpoint(public)
    # The operator's word opens it: an allowed endpoint answers through the guarded client.
    allowed = EndpointPolicy.for_server("0.0.0.0", [f"127.0.0.1:{srv.port}"])
    answers, _ = provider_for(srv, endpoint_policy=allowed).classify([("I love it", None)], LABELS)
    assert answers[0].label == 0


def test_a_name_is_checked_after_dns_and_the_connection_goes_to_the_address_checked(scripted_server):
    srv = scripted_server(GOLD)
    policy = EndpointPolicy.parse(["127.0.0.0/8"])  # by address: "localhost" is resolved, checked, pinned
    provider = provider_for(srv, endpoint_policy=policy)
    provider.transport.base_url = f"http://localhost:{srv.port}/v1"
    answers, _ = provider.classify([("I hate it", None)], LABELS)
    assert answers[0].label == 1
    assert srv.requests[-1].headers.get("host") == f"localhost:{srv.port}"  # the name kept for the Host header


def test_a_redirect_to_an_address_the_server_does_not_call_is_refused(scripted_server):
    inner = scripted_server(GOLD)
    with Redirector(inner.url.rsplit("/v1", 1)[0]) as hop:
        policy = EndpointPolicy.for_server("0.0.0.0", [f"127.0.0.1:{hop.port}"])  # the first hop only
        provider = provider_for(inner, endpoint_policy=policy)
        provider.transport.base_url = f"http://127.0.0.1:{hop.port}/v1"
        with pytest.raises(LMError, match=f"does not call http://127.0.0.1:{inner.port}"):
            provider.classify([("I love it", None)], LABELS)
        with pytest.raises(LMError, match="does not call"):
            provider.check_endpoint()
        assert hop.hits >= 1 and inner.count == 0 and not inner.requests
        # Without a policy (a single-user app) the redirect is followed as before.
        free = provider_for(inner, endpoint_policy=EndpointPolicy())
        free.transport.base_url = f"http://127.0.0.1:{hop.port}/v1"
        answers, _ = free.classify([("I love it", None)], LABELS)
        assert answers[0].label == 0 and inner.count == 1


def test_the_servers_policy_reaches_providers_made_without_one_and_its_workers(scripted_server, monkeypatch,
                                                                                tmp_path):
    srv = scripted_server(GOLD)
    public = EndpointPolicy.for_server("0.0.0.0")
    monkeypatch.setenv(POLICY_ENV, public.to_json())  # what a worker's environment holds
    with pytest.raises(LMError, match="does not call"):
        provider_for(srv).classify([("I love it", None)], LABELS)
    monkeypatch.delenv(POLICY_ENV)
    manager = RunManager(tmp_path / "runs", endpoints=public)
    assert {**_worker_env(), **manager.endpoints.env()}[POLICY_ENV] == public.to_json()
    cfg = RunConfig(data="x.csv", ssm=["tfidf"], lm="openai", lm_model="m", lm_base_url=srv.url)
    with pytest.raises(EndpointRefused, match="does not call"):
        manager.create(cfg, "alice")
    assert manager.runs("alice") == []
    local = RunConfig(data="x.csv", ssm=["tfidf"], lm="local")
    manager.create(local, "alice")  # an in-process LM calls no endpoint
