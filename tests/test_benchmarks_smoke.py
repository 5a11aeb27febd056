"""The benchmarks run end to end: ``python -m benchmarks --quick``."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIGURES = [
    "write_rate", "txn_write_rate", "event_latency_p99", "aggregate_write_rate", "fanout_rate", "bootstrap_100k_s",
    "supervisor_bytes_per_resource", "restart_s", "controller_uss_mb", "idle_cpu_pct", "qcontroller_items_per_s",
    "etcd_write_rate", "etcd_concurrent_write_rate", "etcd_event_latency_p50", "memory_write_rate_beside_etcd", "etcd_state_write_rate",
    "etcd_txn_write_rate",
]
#: Figures that need a tool the machine may lack: skipped (and said so) without it.
NEEDS = {name: "etcd" for name in FIGURES if "etcd" in name}
KEYS = ["name", "value", "unit", "baseline", "ratio", "target"]


@pytest.mark.timeout(180)
def test_quick_run_reports_every_figure() -> None:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=170)
    took = time.monotonic() - start
    # Missed performance targets are reported, not failures; a crash or a
    # correctness failure (lost events, no value) exits non-zero.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_name = {line["name"]: line for line in lines}
    for line in lines:
        assert list(line) == KEYS + (["skipped"] if "skipped" in line else [])
    for name in FIGURES:
        assert name in by_name, f"{name} missing from:\n{done.stdout}"
        tool = NEEDS.get(name)
        if tool is not None and shutil.which(tool) is None:  # a machine without it: said, not failed
            assert f"{tool} is not on PATH" in by_name[name]["skipped"], by_name[name]
            continue
        assert "skipped" not in by_name[name], by_name[name]
        value = by_name[name]["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), by_name[name]
        assert math.isfinite(value), by_name[name]
    assert "name" in done.stdout and "target" in done.stdout  # the table follows the JSON lines
    assert took < 120, f"--quick took {took:.0f} s"
