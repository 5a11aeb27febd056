"""systemd/cosihost.service: systemd accepts it, and it says what the design needs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosihost.settings import Settings, Timing

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cosihost.service"
VENV_SCRIPT = "/opt/cosihost/venv/bin/cosihost"


def settings(text: str) -> dict[str, list[str]]:
    """KEY -> values, in order, with backslash-continued lines joined."""
    found: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match and match.group(2) in units, value
    return float(match.group(1)) * units[match.group(2)]


def test_systemd_analyze_verify_is_silent(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd)")
    # verify insists the ExecStart binary exists: point it at this interpreter.
    text = UNIT.read_text().replace(VENV_SCRIPT, f"{sys.executable} -m cosihost")
    assert VENV_SCRIPT not in text
    copy = tmp_path / "cosihost.service"
    copy.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


def test_the_unit_says_what_the_supervisor_relies_on():
    s = settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert seconds(one["WatchdogSec"]) >= 10
    assert one["Restart"] == "on-failure"
    assert one["Delegate"] == "yes" and one.get("ProtectControlGroups", "no") == "no"
    assert one["OOMPolicy"] == "continue"  # a controller's own OOM kill must not stop the host
    assert one["KillMode"] == "mixed"
    assert seconds(one["TimeoutStopSec"]) > Timing().stop_timeout + 5
    assert one["RuntimeDirectory"] == "cosihost" and one["RuntimeDirectoryMode"] == "0750"
    assert one["StateDirectory"] == "cosihost"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one.get("PrivateDevices", "no") == "no"  # it manages a device


def test_exec_start_matches_the_cli_and_the_settings_defaults():
    argv = shlex.split(settings(UNIT.read_text())["ExecStart"][-1])
    assert argv[:2] == [VENV_SCRIPT, "run"]
    options = dict(zip(argv[2::2], argv[3::2]))
    assert options == {"--controllers": "/etc/cosihost/controllers.d", "--config": "/etc/cosihost/config.toml",
                       "--runtime-dir": "%t/cosihost", "--state-dir": "%S/cosihost"}
    help_text = subprocess.run([sys.executable, "-m", "cosihost", "run", "--help"], capture_output=True,
                               text=True, timeout=30, check=True).stdout
    for option in options:
        assert option in help_text
    # %t and %S are /run and /var/lib for a system unit: where a root client looks by default.
    if os.geteuid() == 0 and "COSIHOST_RUNTIME_DIR" not in os.environ:
        assert str(Settings.build().runtime_dir) == "/run/cosihost"
        assert str(Settings.build().state_dir) == "/var/lib/cosihost"


def test_the_example_config_loads_and_changes_nothing():
    shipped = Settings.build(config=REPO / "systemd" / "config.toml")
    plain = Settings.build()
    assert (shipped.timing, shipped.limits, shipped.persistent_namespaces, shipped.history) == \
        (plain.timing, plain.limits, plain.persistent_namespaces, plain.history)
