"""The qcontroller benchmark runs and measures both controllers:
``python -m benchmarks --only qcontroller --quick``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_qcontroller_items_per_s_is_reported_against_a_plain_controller() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "qcontroller"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    figure = next(line for line in lines if line["name"] == "qcontroller_items_per_s")
    assert figure["unit"] == "items/s" and figure["value"] > 0 and figure["baseline"] > 0
    assert abs(figure["ratio"] - figure["value"] / figure["baseline"]) < 1e-3
