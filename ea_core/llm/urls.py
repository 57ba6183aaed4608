"""Endpoint URLs without the secrets people paste into them.

``http://user:KEY@host/v1`` is a common way to hand a key to a proxy, and such a URL would end up
in settings files, bundles, logs and cache keys. `strip_userinfo` gives the URL to store or show;
`userinfo_secret` gives what was in it, so a caller can use it as the key (in memory only).
Both read the authority by hand (``scheme://[userinfo@]host[:port]``) rather than with
`urllib.parse`, so a URL with a malformed port or host still loses its secret.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import unquote

# scheme://authority  rest   (the authority ends at the first / ? or #)
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#]*)(?P<rest>.*)$", re.S)


def _userinfo(url: object) -> Optional[tuple[str, str, str, str]]:
    """(scheme://, userinfo, host[:port], rest) when `url` has a userinfo part, else None."""
    if not isinstance(url, str) or "@" not in url:
        return None
    m = _URL.match(url.strip())
    if m is None or "@" not in m["authority"]:
        return None
    userinfo, _, host = m["authority"].rpartition("@")
    return m["scheme"], userinfo, host, m["rest"]


def strip_userinfo(url: str) -> str:
    """`url` without ``user:password@`` (scheme, host, port, path and query kept); any other
    string is returned unchanged."""
    found = _userinfo(url)
    if found is None:
        return url
    scheme, _, host, rest = found
    return f"{scheme}{host}{rest}"


def userinfo_secret(url: Optional[str]) -> Optional[str]:
    """The secret a URL carries: the password of ``user:password@``, else a lone ``token@``;
    None when there is none. Percent-escapes are decoded."""
    found = _userinfo(url)
    if found is None:
        return None
    user, sep, password = found[1].partition(":")
    secret = unquote(password if sep else user)
    return secret or None
