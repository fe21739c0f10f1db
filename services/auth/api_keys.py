"""API keys: random bearer tokens, stored only as SHA-256 hashes in the graph.

A token looks like ``mg_<id>_<secret>``: the id finds the stored record in one indexed lookup,
and the hash of the whole token is compared in constant time. Tokens carry 256 bits of
randomness, so a plain SHA-256 (not a slow password hash) is the right tool.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

from services.graph.store import GraphStore

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
_TOKEN = re.compile(r"^mg_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
# A lookup is trusted this long; every process sees a revocation within it (issue 16: the
# CLI's revocation cannot clear another process's cache).
DEFAULT_CACHE_SECONDS = 0.5


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[Scope, ...]

    def allows(self, scope: Scope) -> bool:
        # A write key can also read; a read key cannot write.
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    token: str  # shown once, never stored


class UnknownApiKey(LookupError):
    pass


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(store: GraphStore, name: str, scopes: tuple[Scope, ...]) -> IssuedKey:
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise ValueError(f"scopes must be a non-empty subset of {SCOPES}, got {scopes}")
    key_id = secrets.token_hex(6)
    token = f"mg_{key_id}_{secrets.token_urlsafe(32)}"
    store.query(
        "api_key_create", id=key_id, name=name, scopes=list(scopes), token_sha256=_sha256(token)
    )
    return IssuedKey(ApiKey(key_id, name, tuple(scopes)), token)


def list_api_keys(store: GraphStore) -> list[dict]:
    return [record.data() for record in store.query("api_key_list")]


def revoke_api_key(store: GraphStore, key_id: str) -> None:
    if not store.query("api_key_revoke", id=key_id):
        raise UnknownApiKey(f"no API key with id {key_id!r}")
    ApiKeyVerifier.forget_all()


class ApiKeyVerifier:
    """Checks presented tokens; remembers answers briefly so each request costs no round trip."""

    _cache: dict[str, tuple[float, ApiKey | None]] = {}
    _lock = threading.Lock()

    def __init__(self, store: GraphStore, cache_s: float = DEFAULT_CACHE_SECONDS) -> None:
        self.store = store
        self.cache_s = cache_s

    @classmethod
    def forget_all(cls) -> None:
        with cls._lock:
            cls._cache.clear()

    def verify(self, token: str | None) -> ApiKey | None:
        if not token:
            return None
        match = _TOKEN.match(token)
        if not match:
            return None
        digest = _sha256(token)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached and now - cached[0] < self.cache_s:
            return cached[1]
        records = self.store.query("api_key_get", id=match.group(1))
        key: ApiKey | None = None
        if records:
            record = records[0]
            if not record["revoked"] and hmac.compare_digest(record["token_sha256"], digest):
                key = ApiKey(record["id"], record["name"], tuple(record["scopes"]))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, key)
        return key
