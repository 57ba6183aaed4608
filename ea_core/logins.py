"""The logins a server accepts, read from a file or an environment variable, never from argv.

Why: ``--auth USER:PASSWORD`` puts the password on the command line, where ``ps`` shows it to
every local user. A login file (``--auth-file``) or a variable (`AUTH_ENV`) keeps it out of
sight, and a hashed password (`hash_password`: scrypt, salted) keeps it out of the file too.

One login per line, ``user:password`` or ``user:scrypt$N$r$p$SALT$HASH``; blank lines and lines
starting with ``#`` are skipped. `Logins.check(user, password)` is what Gradio's ``auth=`` takes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ea_core.errors import ConfigError

#: The environment variable that may hold the logins (the same lines as a login file).
AUTH_ENV = "EA_STUDIO_AUTH"
SCHEME = "scrypt"
#: scrypt's cost: about 50 ms and 16 MB a check on a laptop core.
N, R, P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """``scrypt$N$r$p$SALT$HASH`` for a login file (the password itself is not kept)."""
    if not password:
        raise ConfigError("An empty password.")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _matches(stored: str, password: str) -> bool:
    if stored.startswith(SCHEME + "$"):
        try:
            _, n, r, p, salt, digest = stored.split("$")
            got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=2**26,
                                 dklen=len(_unb64(digest)))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(got, _unb64(digest))
    return hmac.compare_digest(stored.encode(), password.encode())


@dataclass
class Logins:
    """User -> stored password (plain or scrypt-hashed)."""

    users: dict[str, str] = field(default_factory=dict)
    source: str = ""
    plain: bool = False  # some password is stored in clear

    @classmethod
    def parse(cls, text: str, source: str = "") -> "Logins":
        users: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user.strip() or not password:
                raise ConfigError(f"{source or 'logins'}, line {number}: give user:password or user:{SCHEME}$... "
                                  "(see python app.py --hash-password).")
            users[user.strip()] = password
        if not users:
            raise ConfigError(f"{source or 'logins'} holds no login.")
        return cls(users, source, any(not v.startswith(SCHEME + "$") for v in users.values()))

    @classmethod
    def from_file(cls, path: str | Path) -> "Logins":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"Cannot read the login file {path}: {err.strerror or err}.") from None
        return cls.parse(text, str(path))

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> Optional["Logins"]:
        text = (os.environ if environ is None else environ).get(AUTH_ENV)
        return cls.parse(text, f"${AUTH_ENV}") if text and text.strip() else None

    def check(self, user: str, password: str) -> bool:
        """Whether `user` logs in with `password` (Gradio's ``auth=`` function)."""
        stored = self.users.get(user)
        if stored is None:
            _matches(f"{SCHEME}${N}${R}${P}$AAAAAAAAAAAAAAAAAAAAAA$AAAA", password)  # the same time as a real user
            return False
        return _matches(stored, password)


def file_warning(path: str | Path, logins: Logins) -> Optional[str]:
    """A warning when a login file with passwords in clear can be read by other users."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if logins.plain and mode & (stat.S_IRGRP | stat.S_IROTH):
        return (f"warning: {path} holds passwords in clear and other users can read it: chmod 600 it, or store "
                "hashes (python app.py --hash-password)")
    return None
