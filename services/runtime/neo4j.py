"""A real Neo4j 5.26 Community server, built from Maven Central modules and run without Docker.

Layout: the jars live once per version in ``<cache_dir>/neo4j-<version>/{lib,plugins}``;
each home has its own ``<home>/neo4j/{conf,data,logs,run,import}``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from services.config import Settings
from services.runtime.processes import (
    ManagedProcess,
    RuntimeProblem,
    log_tail,
    port_in_use,
    require_free_port,
)
from services.secrets import ensure_neo4j_password

SUPPORTED_JAVA_MAJORS = (17, 21)
_JVM_FLAGS = (
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dlog4j2.disable.jmx=true",
    "-Dfile.encoding=UTF-8",
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
)
_MAIN_CLASS = "org.neo4j.server.CommunityEntryPoint"
_DEFAULT_PASSWORD = "neo4j"


@dataclass(frozen=True)
class Neo4jStatus:
    running: bool
    pid: int | None
    bolt_uri: str
    browser_url: str


def _maven_file(name: str) -> Path:
    return Path(str(resources.files("services.runtime") / "maven" / name))


def find_java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "java"] if java_home else []
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise RuntimeProblem(
        "Java was not found: Neo4j 5.26 needs OpenJDK 17 or 21. Install it "
        "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
    )


def java_major_version(java: Path) -> int:
    result = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise RuntimeProblem(f"Could not read the Java version from {java}: {result.stderr!r}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


class Neo4jRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # neo4j.conf needs absolute paths (gds.export.location refuses a relative one), and a
        # relative MEDGRAPH_HOME is a natural thing for an operator to set.
        self.jar_dir = (settings.cache_dir / f"neo4j-{settings.neo4j_version}").resolve()
        self.home = settings.neo4j_home.resolve()
        self.data_dir = (settings.neo4j_data_dir or self.home / "data").resolve()
        self.process = ManagedProcess(
            "neo4j", self.home / "run" / "neo4j.pid", self.home / "logs" / "console.log"
        )

    # --- fetch -----------------------------------------------------------------------------
    def jars_present(self) -> bool:
        return (self.jar_dir / ".complete").exists()

    def fetch(self) -> Path:
        """Downloads server, Browser, APOC and GDS jars from Maven Central, once per version."""
        if self.jars_present():
            return self.jar_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeProblem(
                "Maven (mvn) is needed once to fetch Neo4j from Maven Central: "
                "apt-get install maven."
            )
        staging = self.jar_dir.with_name(self.jar_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for pom, folder in (("server-pom.xml", "lib"), ("plugins-pom.xml", "plugins")):
            command = [
                mvn, "-B", "-q", "-f", str(_maven_file(pom)),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging / folder}",
                "-Dmdep.prependGroupId=true",
                "-DincludeScope=runtime",
                f"-Dneo4j.version={self.settings.neo4j_version}",
                f"-Dapoc.version={self.settings.neo4j_version}",
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
                raise RuntimeProblem(
                    f"Downloading Neo4j {self.settings.neo4j_version} ({folder}) from Maven "
                    f"Central failed (mvn exit {result.returncode}):\n{tail}"
                )
        _drop_plugin_jars_already_in_lib(staging / "lib", staging / "plugins")
        (staging / ".complete").write_text(self.settings.neo4j_version)
        shutil.rmtree(self.jar_dir, ignore_errors=True)
        staging.rename(self.jar_dir)
        return self.jar_dir

    # --- configure -------------------------------------------------------------------------
    def write_config(self) -> Path:
        conf_dir = self.home / "conf"
        for sub in ("conf", "logs", "run", "import"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        lines = {
            "server.default_listen_address": s.neo4j_host,
            "server.bolt.listen_address": f"{s.neo4j_host}:{s.neo4j_bolt_port}",
            "server.bolt.advertised_address": f"{s.neo4j_host}:{s.neo4j_bolt_port}",
            "server.http.listen_address": f"{s.neo4j_host}:{s.neo4j_http_port}",
            "server.http.advertised_address": f"{s.neo4j_host}:{s.neo4j_http_port}",
            "server.https.enabled": "false",
            "server.directories.data": self.data_dir,
            "server.directories.logs": self.home / "logs",
            "server.directories.run": self.home / "run",
            "server.directories.plugins": self.jar_dir / "plugins",
            "server.directories.import": self.home / "import",
            "server.memory.pagecache.size": s.neo4j_pagecache,
            "dbms.usage_report.enabled": "false",
            "dbms.security.auth_enabled": str(s.neo4j_auth).lower(),
            "dbms.security.procedures.unrestricted": "gds.*,apoc.*",
            "dbms.security.procedures.allowlist": "gds.*,apoc.*,db.*,dbms.*",
            "gds.export.location": self.home / "import",
            # The server runs on 2 cores next to workers; keep its thread pools modest.
            "server.bolt.thread_pool_max_size": "64",
            "db.tx_log.rotation.retention_policy": "2 files",
            "db.tx_log.preallocate": str(s.neo4j_tx_log_preallocate).lower(),
        }
        conf = conf_dir / "neo4j.conf"
        conf.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        return conf

    # --- lifecycle -------------------------------------------------------------------------
    def status(self) -> Neo4jStatus:
        s = self.settings
        return Neo4jStatus(
            running=self.process.is_running(),
            pid=self.process.pid(),
            bolt_uri=s.bolt_uri,
            browser_url=f"http://{s.neo4j_host}:{s.neo4j_http_port}/browser/",
        )

    def start(self) -> tuple[bool, str | None]:
        """Starts the server and waits for Bolt.

        Returns (started_now, new_password): started_now is False when it was already
        running; new_password is set only the first time a password is generated.
        """
        if self.process.is_running():
            return False, None
        s = self.settings
        java = find_java()
        major = java_major_version(java)
        if major not in SUPPORTED_JAVA_MAJORS:
            raise RuntimeProblem(
                f"Neo4j 5.26 needs Java 17 or 21, but {java} is Java {major}. "
                "Set JAVA_HOME to a JDK 17 or 21."
            )
        require_free_port("Neo4j (Bolt)", s.neo4j_host, s.neo4j_bolt_port)
        require_free_port("Neo4j (HTTP)", s.neo4j_host, s.neo4j_http_port)
        self.fetch()
        self.write_config()
        new_password: str | None = None
        if s.neo4j_auth:
            password, created = ensure_neo4j_password(s)
            new_password = password if created else None
        classpath = ":".join(
            [str(self.jar_dir / "plugins" / "*"), str(self.home / "conf" / "*"),
             str(self.jar_dir / "lib" / "*")]
        )  # fmt: skip
        argv = [
            str(java), f"-Xms{s.neo4j_heap}", f"-Xmx{s.neo4j_heap}", *_JVM_FLAGS,
            "-cp", classpath, _MAIN_CLASS,
            f"--home-dir={self.home}", f"--config-dir={self.home / 'conf'}", "--console-mode",
        ]  # fmt: skip
        self.process.log_file.unlink(missing_ok=True)
        self.process.spawn(argv)
        self._wait_for_bolt()
        if s.neo4j_auth:
            self._set_initial_password()
        return True, new_password

    def stop(self) -> bool:
        return self.process.stop(timeout_s=90)

    def _wait_for_bolt(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.neo4j_start_timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeProblem(
                    "Neo4j exited during start-up. Last lines of its log "
                    f"({self.process.log_file}):\n{log_tail(self.process.log_file)}"
                )
            if port_in_use(s.neo4j_host, s.neo4j_bolt_port) and _bolt_answers(s):
                return
            time.sleep(1.0)
        self.process.stop()
        raise RuntimeProblem(
            f"Neo4j did not answer on {s.bolt_uri} within {s.neo4j_start_timeout_s:.0f} s. "
            f"Last lines of its log:\n{log_tail(self.process.log_file)}"
        )

    def _set_initial_password(self) -> None:
        """A fresh database has neo4j/neo4j with a forced change; set ours instead."""
        from neo4j import GraphDatabase
        from neo4j.exceptions import AuthError

        s = self.settings
        password = ensure_neo4j_password(s)[0]
        with GraphDatabase.driver(s.bolt_uri, auth=(s.neo4j_user, password)) as driver:
            try:
                driver.verify_connectivity()
                return
            except AuthError:
                pass
        with GraphDatabase.driver(s.bolt_uri, auth=(s.neo4j_user, _DEFAULT_PASSWORD)) as driver:
            try:
                driver.execute_query(
                    "ALTER CURRENT USER SET PASSWORD FROM $old TO $new",
                    old=_DEFAULT_PASSWORD,
                    new=password,
                    database_="system",
                )
            except AuthError as error:
                raise RuntimeProblem(
                    f"Neo4j rejected the stored password in {s.secrets_dir}. The data folder "
                    f"{self.data_dir} was created with another password: set "
                    "MEDGRAPH_NEO4J_PASSWORD to it, or remove the data folder."
                ) from error


def _bolt_answers(settings: Settings) -> bool:
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, ServiceUnavailable

    # Any authenticated or refused answer proves the server is up; auth is sorted out after.
    try:
        with GraphDatabase.driver(settings.bolt_uri, auth=("neo4j", "probe")) as driver:
            driver.verify_connectivity()
        return True
    except AuthError:
        return True
    except (ServiceUnavailable, OSError):
        return False
    except Exception:  # noqa: BLE001 - e.g. a half-started server closing the socket
        return False


def _artifact_key(jar_name: str) -> str:
    """'org.slf4j.slf4j-api-2.0.9.jar' -> 'org.slf4j.slf4j-api' (groupId.artifactId)."""
    return re.sub(r"-\d[^-]*(-[A-Za-z0-9.]+)*\.jar$", "", jar_name)


def _drop_plugin_jars_already_in_lib(lib: Path, plugins: Path) -> None:
    """Plugins share some libraries with the server; two versions on one classpath clash."""
    in_lib = {_artifact_key(jar.name) for jar in lib.glob("*.jar")}
    for jar in plugins.glob("*.jar"):
        if _artifact_key(jar.name) in in_lib:
            jar.unlink()
