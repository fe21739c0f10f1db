"""One DenseNet-121 training step on the CPU, by OpenMP wait policy, memory format and size.

    .venv/bin/python -m bench.train_step                 # idle machine: every setting once
    .venv/bin/python -m bench.train_step --busy 2        # with two busy-looping processes

Each setting runs in a fresh Python process, because OpenMP reads its wait policy only when
torch first loads: Adam on `build_densenet121(14)`, batch 32 of random grey images replicated
to three channels (as `to_network_input` does), BCE loss, 2 warm-up steps, then the mean of
timed steps. The policy rows are what `services/__init__.py` sets for every process
(`PASSIVE`), what `training.process.TRAINING_OPENMP_ENV` sets for training, and libgomp's
default. Results go to bench/results/train_step[-busyN].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.encoder.training.process import TRAINING_OPENMP_ENV

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES: dict[str, dict[str, str]] = {
    "passive (every medgraph process)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin 100k, then sleep (training)": dict(TRAINING_OPENMP_ENV),
    "libgomp default": {},
}
# The child: no `services` import, so nothing sets the policy but its environment.
STEP_PROGRAM = """
import sys, time, torch
from torchvision.models import densenet121
size, channels_last, steps = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
torch.manual_seed(0)
model = densenet121(weights=None, num_classes=14)
inputs = torch.randn(32, 1, size, size).expand(-1, 3, -1, -1)
if channels_last:
    model = model.to(memory_format=torch.channels_last)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
targets = (torch.rand(32, 14) > 0.8).float()
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
loss_function = torch.nn.BCEWithLogitsLoss()
def step():
    loss = loss_function(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(2):
    step()
started, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
wall = time.perf_counter() - started
print(wall / steps * 1000, (time.process_time() - cpu) / wall)
"""


def measure(size: int, channels_last: bool, policy: dict[str, str], steps: int) -> dict[str, Any]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    } | policy
    completed = subprocess.run(
        [sys.executable, "-c", STEP_PROGRAM, str(size), "1" if channels_last else "0", str(steps)],
        env=environment, capture_output=True, text=True, check=True,
    )  # fmt: skip
    milliseconds, cores = (float(value) for value in completed.stdout.split())
    return {"ms_per_step": round(milliseconds, 1), "cores_busy": round(cores, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside it")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    rows = []
    try:
        time.sleep(1.0 if hogs else 0.0)
        for size in args.sizes:
            for name, policy in POLICIES.items():
                for channels_last in (False, True):
                    row = {"image_size": size, "policy": name, "channels_last": channels_last}
                    row |= measure(size, channels_last, policy, args.steps)
                    rows.append(row)
                    print(
                        f"{size:4d} px  {name:34s} {'NHWC' if channels_last else 'NCHW'}  "
                        f"{row['ms_per_step']:7.0f} ms/step  ({row['cores_busy']:.2f} cores)",
                        flush=True,
                    )
    finally:
        for hog in hogs:
            hog.kill()
    load = os.getloadavg()
    result = {
        "command": " ".join(["python -m bench.train_step", *sys.argv[1:]]),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "busy_processes": args.busy,
        "load_average_after": [round(value, 2) for value in load],
        "batch_size": 32,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"train_step{f'-busy{args.busy}' if args.busy else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
