"""A wheel install runs the bundled controllers, from any folder.

A device image installs cosihost from a wheel, not from a checkout, so the
bundled device controllers must travel inside the package. This builds the
wheel from a copy of the source, installs it into a fresh virtual
environment outside the checkout and runs `cosihost run` and
`cosihost get links` from there, as a user would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
import venv
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from cosihost.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_NAMES = {"net.LinkStatusController", "net.AddressStatusController", "net.HostnameStatusController",
                 "net.HostnameSpecController", "system.CPUStatsController", "system.MemoryStatsController",
                 "system.DiskStatsController"}


def test_the_package_list_names_every_package() -> None:
    """pyproject.toml lists packages by hand (one is mapped from controllers/);
    a package added to the tree but not to the list would be missing from
    every wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cosihost").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"cosihost.bundled"}
    assert config["package-dir"] == {"cosihost.bundled": "controllers"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed; its bin folder."""
    pytest.importorskip("wheel", reason="building a wheel needs the 'wheel' package: pip install -e '.[test]'")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", ".cosihost"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(base / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (base / "dist").glob("cosihost-*.whl")
    # The dependencies come from this interpreter's site-packages: the test
    # is about what the wheel carries, and must not need a package index.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(base / "venv")
    bin_dir = base / "venv" / "bin"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           str(wheel)], capture_output=True, text=True, timeout=120, cwd=base, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COSIHOST_RUNTIME_DIR")}
    return dict(env, **extra)


@pytest.fixture
def host(installed: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`cosihost run` from the venv with no controllers flag, in a folder
    that is not the checkout; killed with its controllers at the end."""
    env = _clean_env(COSIHOST_RUNTIME_DIR=str(tmp_path / "run"))
    proc = subprocess.Popen([str(installed / "cosihost"), "run", "--state-dir", str(tmp_path / "state")],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("wb"))
    try:
        yield tmp_path, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cli(bin_dir: Path, cwd: Path, env: dict[str, str], *args: str) -> str:
    """The command's output; "" while it fails (the host is still starting)."""
    done = subprocess.run([str(bin_dir / "cosihost"), *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env=env)
    return done.stdout if done.returncode == 0 else ""


def _column(table: str, name: str) -> set[str]:
    if not table:
        return set()
    header, *rows = table.splitlines()
    index = header.split().index(name)
    return {row.split()[index] for row in rows if row.strip()}


@pytest.mark.timeout(180)
def test_a_wheel_install_runs_the_bundled_controllers(installed: Path, host: tuple[Path, dict[str, str]]) -> None:
    cwd, env = host
    where = subprocess.run([str(installed / "python"), "-c", "import cosihost, cosihost.settings as s; "
                            "print(cosihost.__file__); print(s.bundled_controllers_dir())"],
                           capture_output=True, text=True, cwd=cwd, env=env, timeout=30).stdout.split()
    venv_dir = installed.parent.resolve()
    assert all(Path(p).resolve().is_relative_to(venv_dir) for p in where), where
    assert ROOT not in Path(where[0]).resolve().parents
    assert (Path(where[0]).parent / "py.typed").is_file()   # PEP 561: the API is typed

    names = set(psutil.net_if_stats())
    shown = wait_for(lambda: (ids := _column(_cli(installed, cwd, env, "get", "links"), "ID")) >= names and ids,
                     timeout=60, message=f"`cosihost get links` to list {sorted(names)}")
    assert names <= shown
    running = wait_for(lambda: (r := _running(installed, cwd, env)) >= BUNDLED_NAMES and r,
                       timeout=30, message="every bundled controller running")
    assert BUNDLED_NAMES <= running


def _running(bin_dir: Path, cwd: Path, env: dict[str, str]) -> set[str]:
    rows = _cli(bin_dir, cwd, env, "controllers").splitlines()[1:]
    return {row.split()[0] for row in rows if row.split()[1:2] == ["running"]}
