"""The bundled controllers and the drop-in folder, layered.

A device runs the bundled controllers plus its own drop-ins; a drop-in
named like a bundled module replaces it, an empty one turns it off, and
``bundled = false`` turns them all off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosihost import InvalidRequestError
from cosihost.settings import Settings, bundled_controllers_dir
from cosihost.supervisor.processes import discover

BUNDLED = {p.name for p in bundled_controllers_dir().glob("*.py")}
REPLACEMENT = """
from cosihost import Controller, Output

class Replacement(Controller):
    name = "site.SystemReplacement"
    outputs = [Output("Replacements.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("default", "Replacements.test.cosihost.dev", "one", lambda s: s.update(ok=True))
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_later_folder_replaces_modules_by_name_and_an_empty_file_turns_one_off(tmp_path: Path) -> None:
    base, drop = tmp_path / "base", tmp_path / "drop"
    for name in ("a.py", "b.py", "c.py", "_private.py"):
        _write(base, name, "X = 1\n")
    _write(drop, "b.py", "X = 2\n")
    _write(drop, "c.py", "")
    _write(drop, "d.py", "X = 3\n")
    assert discover(base, drop) == [base / "a.py", drop / "b.py", drop / "d.py"]
    assert discover(base, tmp_path / "missing") == [base / "a.py", base / "b.py", base / "c.py"]


def test_settings_layer_flags_over_config_over_defaults(tmp_path: Path) -> None:
    assert Settings.build(runtime_dir=tmp_path).controller_folders() == [bundled_controllers_dir()]
    config = tmp_path / "config.toml"
    config.write_text('[controllers]\ndir = "/srv/drop"\nbundled = false\n')
    settings = Settings.build(runtime_dir=tmp_path, config=config)
    assert settings.controller_folders() == [Path("/srv/drop")]
    settings = Settings.build(runtime_dir=tmp_path, config=config, controllers_dir=tmp_path, bundled=True)
    assert settings.controller_folders() == [bundled_controllers_dir(), tmp_path]


@pytest.mark.parametrize("table, message", [
    ('bundled = "no"', "bundled must be true or false"),
    ("dir = 3", "dir must be a folder path"),
    ("folder = 'x'", "unknown [controllers] key 'folder'"),
    ("removed_outputs = 'shred'", "removed_outputs must be \"keep\" or \"destroy\""),
])
def test_bad_controllers_tables_are_refused_clearly(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[controllers]\n{table}\n")
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.build(runtime_dir=tmp_path, config=config)


@pytest.mark.timeout(90)
def test_drop_ins_replace_and_turn_off_bundled_modules(supervisor_factory) -> None:
    assert {"hostname.py", "system.py", "links.py"} <= BUNDLED
    sup = supervisor_factory(bundled=True, controllers={"system.py": REPLACEMENT, "hostname.py": ""})
    running = set(sup.statuses())
    assert {"net.LinkStatusController", "net.AddressStatusController", "site.SystemReplacement"} <= running
    assert not {"net.HostnameSpecController", "net.HostnameStatusController", "system.CPUStatsController"} & running

    (sup.controllers_dir / "hostname.py").unlink()   # the bundled hostname module comes back
    with sup.client() as c:
        c.call("reload")
    sup.wait_status("net.HostnameSpecController", lambda s: s["state"] == "running")
