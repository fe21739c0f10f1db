"""Peak resident memory of benchmark processes (the Python side and the Neo4j JVM)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil


@dataclass
class PeakSampler:
    """Peak resident memory of processes, sampled every ``interval_s`` in a thread."""

    pids: dict[str, int]
    interval_s: float = 0.25
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        processes = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        while True:
            for name, process in processes.items():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            if self._stop.wait(self.interval_s):
                return
