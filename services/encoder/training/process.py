"""`train_encoder` in a fresh child process whose OpenMP threads spin while they wait.

Why: every medgraph process sets ``OMP_WAIT_POLICY=PASSIVE`` (``services/__init__.py``), which
keeps torch usable beside busy neighbours but makes each of DenseNet-121's hundreds of small
parallel regions wake a sleeping thread. On the idle 2-core machine one 64-px training step
(batch 32, channels-last) took 950 ms with it and 540 ms with a short spin (bench/train_step.py).
Training owns the machine while it runs, so it runs where the threads may spin a little. The
policy only counts before torch is first loaded, hence a child process, started by ``spawn``
with its own environment.
The child's lines come back through a queue, so ``echo`` works as it does in-process (click's
test runner included); a progress bar is written by the child to the terminal directly.
A parent that dies without its ``finally`` (SIGTERM from a service manager, SIGKILL) takes the
child with it: the child watches its parent and exits when it is gone, instead of training on
as an orphan that holds the CPU for the rest of the run.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from services.encoder.training.config import TrainConfig, TrainingError
from services.encoder.training.loop import TrainResult, train_encoder

# Spin up to this many iterations before sleeping: libgomp's idle-machine speed (540 ms a step
# against its default's 530) without its unbounded spin beside busy processes (1,232 ms
# against 1,979 with two; bench/results/train_step*.json).
TRAINING_OPENMP_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "100000"}
_POLL_SECONDS = 1.0
_EXIT_GRACE_SECONDS = 30.0
_ORPHANED_EXIT_CODE = 3
_environment_lock = threading.Lock()


def train_in_own_process(
    config: TrainConfig, *, progress: bool = False, echo: Callable[[str], None] = print
) -> TrainResult:
    """Run ``train_encoder(config)`` in a child process; same result, lines and errors.

    Bad input raises ``TrainingError`` with the child's message; a child that dies without
    an answer (killed, out of memory) raises ``TrainingError`` naming its exit code.
    """
    context = multiprocessing.get_context("spawn")
    messages: Any = context.Queue()
    child = context.Process(
        target=_train_and_report, args=(config, progress, messages), name="medgraph-train"
    )
    with _environment(TRAINING_OPENMP_ENV):
        child.start()
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not child.is_alive():
                    raise TrainingError(
                        f"the training process exited with code {child.exitcode} "
                        "without a result (killed, or out of memory?)"
                    ) from None
                continue
            if kind == "line":
                echo(payload)
            elif kind == "result":
                # Let the child finish exiting: terminated while it tears down, it leaves its
                # semaphores behind (the resource tracker's "leaked semaphore" warnings).
                child.join(_EXIT_GRACE_SECONDS)
                return payload  # type: ignore[no-any-return]
            elif kind == "user_error":
                raise TrainingError(payload)
            else:
                raise RuntimeError(f"the training process failed:\n{payload}")
    finally:
        if child.is_alive():
            child.terminate()
        child.join()


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(_POLL_SECONDS)
        if os.getppid() != parent:  # re-parented: the process that wanted the result is gone
            os._exit(_ORPHANED_EXIT_CODE)


def _train_and_report(config: TrainConfig, progress: bool, messages: Any) -> None:
    threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    try:
        result = train_encoder(
            config, progress=progress, echo=lambda line: messages.put(("line", line))
        )
    except ValueError as exc:
        # Every input error here (labels, images, checkpoint, settings) is a ValueError whose
        # message names the problem; the classes themselves do not all survive pickling.
        messages.put(("user_error", str(exc)))
    except BaseException:
        messages.put(("failure", traceback.format_exc()))
    else:
        messages.put(("result", result))


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ while a child starts (it copies the environment then)."""
    with _environment_lock:
        before = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
