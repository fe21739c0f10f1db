"""A local Redis (Debian's redis-server) on loopback, the Celery broker and result store."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

from services.config import Settings
from services.runtime.processes import ManagedProcess, RuntimeProblem, log_tail, require_free_port
from services.secrets import redis_password


def redacted_url(settings: Settings) -> str:
    """The broker URL with its password hidden, for messages and logs."""
    return redact_url(settings.broker_url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


@dataclass(frozen=True)
class RedisStatus:
    running: bool
    pid: int | None
    url: str


class RedisRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home / "redis"
        self.process = ManagedProcess("redis", self.home / "redis.pid", self.home / "redis.log")

    def status(self) -> RedisStatus:
        return RedisStatus(
            self.process.is_running(), self.process.pid(), redacted_url(self.settings)
        )

    def start(self, timeout_s: float = 30.0) -> bool:
        if self.process.is_running():
            return False
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeProblem(
                "redis-server is not installed: apt-get install redis-server "
                "(the setup script does this for you)."
            )
        s = self.settings
        require_free_port("Redis", s.redis_host, s.redis_port)
        self.home.mkdir(parents=True, exist_ok=True)
        password = redis_password(s)
        # The password goes in a 0600 config file, not on the command line (visible in ps).
        config = self.home / "redis.conf"
        config.unlink(missing_ok=True)
        config.touch(mode=0o600)
        if "\n" in password or "\r" in password:
            raise RuntimeProblem("the Redis password must be one line (MEDGRAPH_REDIS_PASSWORD)")
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        config.write_text(f'requirepass "{quoted}"\n')
        argv = [
            server, str(config), "--port", str(s.redis_port), "--bind", s.redis_host,
            "--dir", str(self.home), "--daemonize", "no", "--protected-mode", "yes",
            # The append-only file keeps queued Celery messages across a Redis restart.
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        ]  # fmt: skip
        self.process.log_file.unlink(missing_ok=True)
        self.process.spawn(argv)
        client = redis.Redis(
            host=s.redis_host, port=s.redis_port, password=password, socket_timeout=1
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeProblem(
                    f"redis-server exited during start-up:\n{log_tail(self.process.log_file)}"
                )
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.2)
        self.process.stop()
        raise RuntimeProblem(f"Redis did not answer PING on port {s.redis_port}.")

    def stop(self) -> bool:
        return self.process.stop(timeout_s=30)
