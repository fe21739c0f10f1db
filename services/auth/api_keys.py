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
# A token naming a key id the directory lacks reloads it, at most this often.
MISS_RELOAD_S = 0.1


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
    ApiKeyVerifier.forget_all()  # this process knows the new key at once
    return IssuedKey(ApiKey(key_id, name, tuple(scopes)), token)


def list_api_keys(store: GraphStore) -> list[dict]:
    return [record.data() for record in store.query("api_key_list")]


def revoke_api_key(store: GraphStore, key_id: str) -> None:
    if not store.query("api_key_revoke", id=key_id):
        raise UnknownApiKey(f"no API key with id {key_id!r}")
    ApiKeyVerifier.forget_all()


@dataclass(frozen=True)
class _Directory:
    loaded_at: float
    keys: dict[str, tuple[str, ApiKey]]  # key id -> (SHA-256 of the token, key)


def token_key_id(token: str | None) -> str | None:
    """The key id a well-formed token names (its public part), else None."""
    match = _TOKEN.match(token or "")
    return match.group(1) if match else None


class ApiKeyVerifier:
    """Checks presented tokens against an in-memory directory of the keys that are not revoked,
    reloaded from the graph every ``cache_s`` (and, for an id it lacks, at most every
    MISS_RELOAD_S): one query at a time, whatever the number of requests or failed guesses. A
    revocation is seen by every process within ``cache_s``."""

    _directories: dict[int, _Directory] = {}
    _lock = threading.Lock()
    _reload_lock = threading.Lock()
    _generation = 0  # bumped by forget_all; a reload begun before it is not kept

    def __init__(self, store: GraphStore, cache_s: float = DEFAULT_CACHE_SECONDS) -> None:
        self.store = store
        self.cache_s = cache_s

    @classmethod
    def forget_all(cls) -> None:
        with cls._lock:
            cls._directories.clear()
            cls._generation += 1

    def _fresh(self, now: float, max_age: float) -> _Directory | None:
        with self._lock:
            directory = self._directories.get(id(self.store))
        if directory is not None and now - directory.loaded_at < max_age:
            return directory
        return None

    def _directory(self, max_age: float) -> _Directory:
        directory = self._fresh(time.monotonic(), max_age)
        if directory is not None:
            return directory
        with self._reload_lock:  # one reload at a time; the others then use its result
            now = time.monotonic()
            directory = self._fresh(now, max_age)
            if directory is not None:
                return directory
            with self._lock:
                generation = self._generation
            keys = {
                record["id"]: (
                    record["token_sha256"],
                    ApiKey(record["id"], record["name"], tuple(record["scopes"])),
                )
                for record in self.store.query("api_key_directory")
            }
            directory = _Directory(now, keys)
            with self._lock:
                if generation == self._generation:
                    self._directories[id(self.store)] = directory
            return directory

    def verify(self, token: str | None) -> ApiKey | None:
        key_id = token_key_id(token)
        if key_id is None:
            return None
        entry = self._directory(self.cache_s).keys.get(key_id)
        if entry is None:
            # Perhaps a key created since (by another process): look again, but at most every
            # MISS_RELOAD_S, so guessed ids cannot make the reloads more frequent than that.
            entry = self._directory(min(self.cache_s, MISS_RELOAD_S)).keys.get(key_id)
        if entry is None:
            return None
        digest = _sha256(token or "")
        return entry[1] if hmac.compare_digest(entry[0], digest) else None
