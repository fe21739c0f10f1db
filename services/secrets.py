"""Secrets generated once per installation and kept in ``<home>/secrets`` (mode 0600)."""

from __future__ import annotations

from pathlib import Path

from services.config import REDIS_PASSWORD_FILE, Settings, read_or_create_secret

# The helper lives in services.config, which needs it for the Redis URL without importing this
# module (no import cycle).
_read_or_create = read_or_create_secret


def neo4j_password_file(settings: Settings) -> Path:
    return settings.secrets_dir / "neo4j-password"


def neo4j_password(settings: Settings) -> str:
    if settings.neo4j_password:
        return settings.neo4j_password
    return _read_or_create(neo4j_password_file(settings), 18)[0]


def neo4j_auth(settings: Settings) -> tuple[str, str] | None:
    """Credentials for the driver; None when the local server runs without auth."""
    if not settings.neo4j_auth:
        return None
    return (settings.neo4j_user, neo4j_password(settings))


def ensure_neo4j_password(settings: Settings) -> tuple[str, bool]:
    """The password and whether it was generated just now (so the caller prints it once)."""
    if settings.neo4j_password:
        return settings.neo4j_password, False
    return _read_or_create(neo4j_password_file(settings), 18)


def redis_password_file(settings: Settings) -> Path:
    return settings.secrets_dir / REDIS_PASSWORD_FILE


def redis_password(settings: Settings) -> str:
    """The local Redis's password (``requirepass``); URL-safe, so it can sit in a Redis URL."""
    return settings.redis_password_value()


def patient_key_secret(settings: Settings) -> bytes:
    if settings.patient_key_secret:
        return settings.patient_key_secret.encode()
    return _read_or_create(settings.secrets_dir / "patient-key-secret", 32)[0].encode()


def audit_salt(settings: Settings) -> bytes:
    """Salt of the key hashes in audit records: whoever holds it can check whether a given
    image was deleted, nobody else can tell from the records which images were."""
    return _read_or_create(settings.secrets_dir / "audit-salt", 32)[0].encode()


def orthanc_password(settings: Settings) -> str:
    """The local Orthanc's password (its one registered user, ``orthanc_user``)."""
    if settings.orthanc_password:
        return settings.orthanc_password
    return _read_or_create(settings.secrets_dir / "orthanc-password", 18)[0]
