"""Tokens of the recommender: salted hashes in the config, constant-time checks, scopes.

No token is ever stored or passed in plain text: the Serve config (and so the deployment
arguments the dashboard shows) holds ``sha256$<salt>$<digest>`` strings, the digest being
SHA-256 of salt + token.  Tokens are random and long (``secrets.token_urlsafe(32)``: 256 bits),
so one fast hash is enough - no password stretching needed, and a check costs microseconds.

Make a token and its hash (the token goes to the client, the hash into the config or the
tokens file)::

    python -c "import secrets; print(secrets.token_urlsafe(32))" > client.token
    python -c "from rayrec.serve_apps.auth import hash_token; \\
               print(hash_token(open('client.token').read().strip()))"

Scopes: ``read`` (recommendations, ``/versions``), ``write`` (``POST /events``,
``DELETE /sessions/{id}``), ``admin`` (``/admin/*``).  See docs/operations.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

__all__ = ["SCOPES", "Scope", "TokenTable", "hash_token", "route_scope", "verify_token"]

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[str, ...] = ("read", "write", "admin")

OPEN_PATHS = frozenset({"/health", "/ready", "/noop", "/docs", "/docs/oauth2-redirect",
                        "/redoc", "/openapi.json"})


def hash_token(token: str, salt: str | None = None) -> str:
    """``sha256$<salt>$<hex digest of salt + token>`` (a random 16-byte salt by default)."""
    if not token:
        raise ValueError("token must be a non-empty string")
    salt = salt if salt is not None else secrets.token_hex(16)
    digest = hashlib.sha256((salt + token).encode()).hexdigest()
    return f"sha256${salt}${digest}"


def verify_token(token: str, hashed: str) -> bool:
    """Whether ``token`` matches ``hashed`` (:func:`hash_token`), compared in constant time."""
    try:
        algo, salt, digest = hashed.split("$")
    except ValueError:
        return False
    if algo != "sha256":
        return False
    got = hashlib.sha256((salt + token).encode()).hexdigest()
    return hmac.compare_digest(got.encode(), digest.encode())


def check_hash(value: str) -> str:
    """``value`` if it looks like a :func:`hash_token` string (a config check)."""
    parts = value.split("$")
    if len(parts) != 3 or parts[0] != "sha256" or len(parts[2]) != 64 or not parts[1]:
        raise ValueError("a token hash is sha256$<salt>$<64 hex digits> (see "
                         "rayrec.serve_apps.auth.hash_token); never put a plain token here")
    int(parts[2], 16)
    return value


def route_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs (None: open to everyone)."""
    if path in OPEN_PATHS:
        return None
    if path.startswith("/admin/") or path == "/admin":
        return "admin"
    if method == "POST" and path == "/events":
        return "write"
    if method == "DELETE" and path.startswith("/sessions/"):
        return "write"
    return "read"


@dataclass(frozen=True)
class _Entry:
    name: str
    hashed: str
    scopes: frozenset[str]


class TokenTable:
    """The tokens a replica accepts: ``(name, hash, scopes)`` entries."""

    def __init__(self, entries: Iterable[tuple[str, str, Iterable[str]]] = ()) -> None:
        self.entries = [_Entry(n, check_hash(h), frozenset(s)) for n, h, s in entries]
        for e in self.entries:
            bad = e.scopes - set(SCOPES)
            if bad:
                raise ValueError(f"token {e.name!r}: unknown scope(s) {sorted(bad)}; "
                                 f"known: {', '.join(SCOPES)}")

    @staticmethod
    def read_file(path: str | Path) -> list[tuple[str, str, list[str]]]:
        """A tokens file: a YAML/JSON list of ``{name, sha256, scopes}`` (hashes only)."""
        p = Path(path)
        data = yaml.safe_load(p.read_text()) if p.suffix in (".yaml", ".yml") else \
            json.loads(p.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{p}: a tokens file is a list of {{name, sha256, scopes}}")
        out = []
        for k, d in enumerate(data):
            if not isinstance(d, Mapping) or set(d) - {"name", "sha256", "scopes"}:
                raise ValueError(f"{p}: entry {k} must have only name, sha256, scopes")
            out.append((str(d.get("name", f"token{k}")), str(d["sha256"]),
                        list(d.get("scopes", []))))
        return out

    def scopes_of(self, token: str | None) -> frozenset[str] | None:
        """The scopes of ``token`` (None: no such token).  Every entry is checked, so the
        time taken does not say which entry matched."""
        if not token:
            return None
        found: frozenset[str] | None = None
        for e in self.entries:
            if verify_token(token, e.hashed) and found is None:
                found = e.scopes
        return found

    def __len__(self) -> int:
        return len(self.entries)
