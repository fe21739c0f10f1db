"""A local Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``): the PACS that feeds the
archive, started like Neo4j and Redis, and ``medgraph follow orthanc`` kept beside it.

Orthanc's HTTP server (REST API, Explorer, DICOMweb) refuses every host but this one
(``RemoteAccessAllowed: false``) and asks for a password generated once into
``<home>/secrets/orthanc-password``; it lives in a 0600 configuration file, never on a command
line. Orthanc has no setting to bind its DICOM port to one address, so the DICOM server stores
only from modalities an administrator registers (``DicomAlwaysAllowStore: false`` and the
host checked); C-ECHO stays open.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from services.config import REPO_ROOT, Settings
from services.runtime.processes import ManagedProcess, RuntimeProblem, log_tail, require_free_port
from services.secrets import orthanc_password

ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN_GLOB = "/usr/lib/orthanc/libOrthancDicomWeb.so*"


@dataclass(frozen=True)
class OrthancStatus:
    running: bool
    pid: int | None
    url: str
    explorer_url: str


def authorization(settings: Settings) -> str:
    """The Basic credentials of the one Orthanc user, as an Authorization header value."""
    pair = f"{settings.orthanc_user}:{orthanc_password(settings)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class OrthancRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home / "orthanc"
        self.process = ManagedProcess(
            "orthanc", self.home / "orthanc.pid", self.home / "orthanc.log"
        )

    def status(self) -> OrthancStatus:
        url = self.settings.orthanc_base_url
        return OrthancStatus(
            self.process.is_running(), self.process.pid(), url, f"{url}/app/explorer.html"
        )

    def configuration(self) -> dict[str, object]:
        s = self.settings
        plugins = sorted(glob.glob(DICOMWEB_PLUGIN_GLOB))
        return {
            "Name": "medgraph-orthanc",
            "StorageDirectory": str(self.home / "db"),
            "IndexDirectory": str(self.home / "db"),
            "HttpPort": s.orthanc_http_port,
            "DicomPort": s.orthanc_dicom_port,
            "DicomAet": "MEDGRAPH",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {s.orthanc_user: orthanc_password(s)},
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": {},
            "Plugins": plugins[:1],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
        }

    def start(self, timeout_s: float = 60.0) -> bool:
        if self.process.is_running():
            return False
        binary = next((found for name in ORTHANC_BINARIES if (found := shutil.which(name))), None)
        if binary is None:
            raise RuntimeProblem(
                "Orthanc is not installed: apt-get install orthanc orthanc-dicomweb "
                "(the setup script does this for you)."
            )
        s = self.settings
        require_free_port("Orthanc (HTTP)", "127.0.0.1", s.orthanc_http_port)
        require_free_port("Orthanc (DICOM)", "127.0.0.1", s.orthanc_dicom_port)
        (self.home / "db").mkdir(parents=True, exist_ok=True)
        config = self.home / "orthanc.json"
        config.unlink(missing_ok=True)
        config.touch(mode=0o600)
        config.write_text(json.dumps(self.configuration(), indent=2))
        self.process.log_file.unlink(missing_ok=True)
        self.process.spawn([binary, f"--logfile={self.process.log_file}", str(config)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeProblem(
                    f"Orthanc exited during start-up:\n{log_tail(self.process.log_file)}"
                )
            if self.answers():
                return True
            time.sleep(0.3)
        self.process.stop()
        raise RuntimeProblem(f"Orthanc did not answer on port {s.orthanc_http_port}.")

    def answers(self) -> bool:
        request = urllib.request.Request(
            f"{self.settings.orthanc_base_url}/system",
            headers={"Authorization": authorization(self.settings)},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        return self.process.stop(timeout_s=30)


class FollowerRuntime:
    """``medgraph follow orthanc`` as a background process of the local stack."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = ManagedProcess(
            "follower",
            settings.home / "run" / "orthanc-follower.pid",
            settings.home / "logs" / "orthanc-follower.log",
        )

    def start(self) -> bool:
        if self.process.is_running():
            return False
        env = dict(os.environ)
        env["MEDGRAPH_HOME"] = str(self.settings.home)
        self.process.spawn(
            [sys.executable, "-m", "services.cli", "follow", "orthanc"], env=env, cwd=REPO_ROOT
        )
        time.sleep(0.5)
        if not self.process.is_running():
            raise RuntimeProblem(
                f"the Orthanc follower exited at start:\n{log_tail(self.process.log_file)}"
            )
        return True

    def stop(self) -> bool:
        return self.process.stop(timeout_s=30)
