"""Which LM endpoints a server may call on its users' behalf (`EndpointPolicy`).

Why: on a shared server the Large model tab's base URL is free text, and Test connection, a run
and Try it send real requests there. Unchecked, that is a server-side request forgery: internal
services, cloud metadata addresses (169.254.169.254) and other users' local endpoints become
reachable through the studio. A single-user app on 127.0.0.1 keeps every endpoint open; a server
that listens beyond loopback allows only public hosts unless its operator names others.

The check happens where the address is known: after DNS resolution, on every hop of a redirect,
and the connection goes to the address that was checked (a name that resolves to a public address
for the check and to a private one for the connection is not followed). `guarded_client` is the
HTTP client the `openai` SDK gets (`ea_core.llm.transport`); `check_url` answers before any request
with a message a user can read.

Entries the operator allows (``--allow-endpoint``): a host (``api.openai.com``), a wildcard
(``*.openai.azure.com``), ``host:port``, a URL prefix (``http://10.0.0.5:8000/v1``), a network
(``10.0.0.0/8``), or ``public`` (any public host). They are allowed whatever their address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import urlsplit

from ea_core.errors import ConfigError

#: The environment variable a server sets for its workers (never a user's setting).
POLICY_ENV = "EA_ENDPOINT_POLICY"
#: The entry that stands for "any public host".
PUBLIC = "public"
#: Addresses a server listening on them serves this machine only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "ip6-localhost")


class EndpointRefused(ConfigError):
    """An endpoint this server does not call (the message says which, why, and what is allowed)."""


def is_loopback_host(host: Optional[str]) -> bool:
    """Whether a listening address serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refused_address(address: str) -> Optional[str]:
    """Why an IP address is not public (None when it is): private, loopback, link-local (the
    cloud metadata service), shared, reserved, multicast or unspecified."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address (this machine)"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private-network address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved or non-public address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (an IP literal is itself); `EndpointRefused` if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise EndpointRefused(f"The LM endpoint's host {host!r} does not resolve ({err}).") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class _Entry:
    """One allowed entry, parsed."""

    text: str
    kind: str  # "public", "host", "suffix", "url", "network"
    host: str = ""
    port: Optional[int] = None
    scheme: str = ""
    path: str = ""
    network: Any = None

    @classmethod
    def parse(cls, text: str) -> "_Entry":
        raw = text.strip()
        if not raw:
            raise ConfigError("An empty --allow-endpoint entry.")
        if raw.lower() == PUBLIC:
            return cls(raw, "public")
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"--allow-endpoint {raw!r}: give an http(s) URL, a host or a network.")
            return cls(raw, "url", parts.hostname.lower(), parts.port or _default_port(parts.scheme), parts.scheme,
                       parts.path.rstrip("/"))
        if "/" in raw:
            try:
                return cls(raw, "network", network=ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise ConfigError(f"--allow-endpoint {raw!r}: not a host, a URL or a network.") from None
        if raw.startswith("*."):
            return cls(raw, "suffix", raw[2:].lower())
        host, port = raw, None
        if raw.count(":") == 1:  # host:port (an IPv6 literal has more colons)
            host, _, p = raw.partition(":")
            try:
                port = int(p)
            except ValueError:
                raise ConfigError(f"--allow-endpoint {raw!r}: the port is not a number.") from None
        return cls(raw, "host", host.strip("[]").lower(), port)

    def matches(self, scheme: str, host: str, port: int, path: str, addresses: Sequence[str] = ()) -> bool:
        """Whether a request to scheme://host:port/path (resolving to `addresses`) is this entry's."""
        if self.kind == "host":
            return host == self.host and (self.port is None or port == self.port)
        if self.kind == "suffix":
            return host == self.host or host.endswith("." + self.host)
        if self.kind == "url":
            here = path.rstrip("/")
            return (scheme, host, port) == (self.scheme, self.host, self.port) and (
                not self.path or here == self.path or here.startswith(self.path + "/"))
        if self.kind == "network":
            if not addresses:
                return False
            try:
                return all(ipaddress.ip_address(a.split("%", 1)[0]) in self.network for a in addresses)
            except ValueError:
                return False
        return False


@dataclass(frozen=True)
class EndpointPolicy:
    """Which endpoints may be called: any (`allow_any`), or the `allowed` entries (``public``
    among them means any public host). Build with `for_server` or `parse`."""

    allow_any: bool = True
    allowed: tuple[str, ...] = ()
    _entries: tuple[_Entry, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls, allowed: Iterable[str] = (), allow_any: bool = False) -> "EndpointPolicy":
        entries = tuple(_Entry.parse(a) for a in allowed)
        return cls(bool(allow_any), tuple(e.text for e in entries), entries)

    @classmethod
    def for_server(cls, host: Optional[str], allowed: Iterable[str] = (), allow_any: bool = False) -> "EndpointPolicy":
        """The policy of a server listening on `host`: any endpoint with `allow_any`; else the
        `allowed` entries when named; else any endpoint on loopback (a single-user app), public
        hosts only beyond it."""
        allowed = [a for a in allowed if a and a.strip()]
        if allow_any:
            return cls.parse((), allow_any=True)
        if allowed:
            return cls.parse(allowed)
        return cls.parse((), allow_any=True) if is_loopback_host(host) else cls.parse([PUBLIC])

    @property
    def public(self) -> bool:
        return any(e.kind == "public" for e in self._entries)

    @property
    def restricts(self) -> bool:
        return not self.allow_any

    # -- the check --------------------------------------------------------------------------
    def refusal(self, scheme: str, host: str, port: int, path: str = "",
                addresses: Optional[Sequence[str]] = None) -> Optional[str]:
        """Why a request may not go there (None: it may). `addresses`: what `host` resolves to
        (resolved here when None and needed)."""
        if self.allow_any:
            return None
        host = (host or "").strip("[]").lower()
        if scheme not in ("http", "https"):
            return f"only http and https endpoints are called, not {scheme or 'this'}://"
        if any(e.kind in ("host", "suffix", "url") and e.matches(scheme, host, port, path) for e in self._entries):
            return None
        if addresses is None:
            addresses = resolve(host, port)
        if any(e.kind == "network" and e.matches(scheme, host, port, path, addresses) for e in self._entries):
            return None
        if self.public:
            for address in addresses:
                why = refused_address(address)
                if why is not None:
                    return f"{host} is {why}" if host == address.lower() else f"{host} resolves to {address}, {why}"
            return None
        return f"{host} is not among the endpoints this server allows"

    def check_url(self, url: Optional[str]) -> None:
        """`EndpointRefused` when `url` may not be called (DNS resolved now)."""
        if self.allow_any or not url:
            return
        parts = urlsplit(url.strip())
        try:
            port = parts.port or _default_port(parts.scheme)
        except ValueError:
            raise EndpointRefused(f"The LM endpoint {url!r} has a malformed port.") from None
        why = self.refusal(parts.scheme, parts.hostname or "", port, parts.path)
        if why is not None:
            raise EndpointRefused(self.message(url, why))

    def message(self, url: str, why: str) -> str:
        return (f"This server does not call {url}: {why}. {self.describe()} Ask the server's operator to allow it "
                "(--allow-endpoint), or run the studio on your own machine.")

    def describe(self) -> str:
        """For people: which endpoints this server calls."""
        if self.allow_any:
            return "This server calls any endpoint."
        named = [e.text for e in self._entries if e.kind != "public"]
        if self.public and not named:
            return ("This server calls public hosts only (no private, loopback, link-local or cloud metadata "
                    "addresses).")
        if self.public:
            return f"This server calls public hosts and {', '.join(named)}."
        return f"This server calls only {', '.join(named)}."

    # -- passing it on ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"allow_any": self.allow_any, "allowed": list(self.allowed)})

    @classmethod
    def from_json(cls, text: str) -> "EndpointPolicy":
        data = json.loads(text)
        return cls.parse(data.get("allowed") or (), allow_any=bool(data.get("allow_any")))

    def env(self) -> dict[str, str]:
        """What a worker's environment carries of it (nothing when any endpoint is allowed)."""
        return {} if self.allow_any else {POLICY_ENV: self.to_json()}

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "EndpointPolicy":
        """The policy a server gave this process (a worker's); any endpoint when none was given.
        A policy that cannot be read refuses everything rather than allow everything."""
        text = (os.environ if environ is None else environ).get(POLICY_ENV)
        if not text:
            return cls()
        try:
            return cls.from_json(text)
        except (ValueError, ConfigError, AttributeError):
            return cls(False, (), ())

    # -- the HTTP client ----------------------------------------------------------------------
    def guarded_client(self, timeout_s: float) -> Any:
        """An ``httpx2.AsyncClient`` for the `openai` SDK that checks every request, redirects
        included, and connects to the address it checked (None when any endpoint is allowed:
        the SDK's own client)."""
        if self.allow_any:
            return None
        import httpx2

        return httpx2.AsyncClient(transport=_GuardedTransport(self), timeout=timeout_s, follow_redirects=True,
                                  trust_env=False, limits=httpx2.Limits(max_connections=1000,
                                                                        max_keepalive_connections=100))


def refusal_in(exc: BaseException) -> Optional[EndpointRefused]:
    """The `EndpointRefused` an HTTP client's error was caused by (the SDK wraps it), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, EndpointRefused):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None


def _proxy_for(scheme: str) -> Optional[str]:
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(name):
            return os.environ[name]
    return None


class _GuardedTransport:
    """An httpx2 transport: each request's host resolved and checked, then sent to the checked
    address (the name kept for the Host header and TLS). Through an HTTP(S)_PROXY of the
    operator's environment, the name is checked and the proxy connects."""

    def __init__(self, policy: EndpointPolicy) -> None:
        import httpx2

        self.policy = policy
        self._direct = httpx2.AsyncHTTPTransport()
        self._proxied: dict[str, Any] = {}

    async def handle_async_request(self, request: Any) -> Any:
        import anyio

        url = request.url
        scheme, host = url.scheme, (url.host or "").lower()
        port = url.port or _default_port(scheme)
        if scheme not in ("http", "https"):
            raise EndpointRefused(self.policy.message(str(url), "only http and https endpoints are called"))
        proxy = _proxy_for(scheme)
        if any(e.kind in ("host", "suffix", "url") and e.matches(scheme, host, port, url.path)
               for e in self.policy._entries):  # named by the operator: whatever its address
            return await (self._via_proxy(scheme, proxy) if proxy else self._direct).handle_async_request(request)
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise EndpointRefused(f"The LM endpoint's host {host!r} does not resolve ({err}).") from None
        addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
        why = (self.policy.refusal(scheme, host, port, url.path, addresses=addresses) if addresses
               else f"{host} resolves to no address")
        if why is not None:
            raise EndpointRefused(self.policy.message(str(url.copy_with(query=None)), why))
        if proxy:
            return await self._via_proxy(scheme, proxy).handle_async_request(request)
        # Connect to the address just checked: a name that resolves again to another address
        # (DNS rebinding) is not followed. The Host header and TLS keep the name.
        request.extensions = {**request.extensions, "sni_hostname": host}
        request.url = url.copy_with(host=addresses[0])
        return await self._direct.handle_async_request(request)

    def _via_proxy(self, scheme: str, proxy: str) -> Any:
        import httpx2

        if scheme not in self._proxied:
            self._proxied[scheme] = httpx2.AsyncHTTPTransport(proxy=proxy)
        return self._proxied[scheme]

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()
