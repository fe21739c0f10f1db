"""Secrets generated once per installation and kept in ``<home>/secrets`` (mode 0600)."""

from __future__ import annotations

import secrets
from pathlib import Path

from services.config import Settings


def _read_or_create(path: Path, nbytes: int) -> tuple[str, bool]:
    """Returns (secret, created_now)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    # O_EXCL so that two processes starting at once cannot both write a different secret.
    try:
        with open(path, "x") as handle:
            handle.write(value + "\n")
    except FileExistsError:
        return path.read_text().strip(), False
    path.chmod(0o600)
    return value, True


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


def patient_key_secret(settings: Settings) -> bytes:
    if settings.patient_key_secret:
        return settings.patient_key_secret.encode()
    return _read_or_create(settings.secrets_dir / "patient-key-secret", 32)[0].encode()
