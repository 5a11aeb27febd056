"""Limits, piece by piece: the values, and each mechanism on its own.

The cgroup v1 and rlimit tests use the real kernel (and skip, saying why,
where they cannot: no root, no writable hierarchy). cgroup v2 is exercised
for real only where a delegated subtree with controllers exists; its
file-writing logic is also checked against a directory tree standing in
for cgroupfs, the one place a stand-in is used, because the kernel
interface is not available everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from cosihost import InvalidRequestError
from cosihost.supervisor import limits
from cosihost.supervisor.limits import (PLACEMENT_FAILED_EXIT, LimitError, NoLimits, parse_count, parse_cpu,
                                        parse_limits, parse_size)
from cosihost.supervisor.limits.cgroup1 import Cgroup1Limiter
from cosihost.supervisor.limits.cgroup2 import Cgroup2Limiter
from cosihost.supervisor.limits.cgroupfs import leaf_name, set_limit
from cosihost.supervisor.limits.rlimits import RlimitLimiter, enter
from cosihost.testing import wait_for

pytestmark = pytest.mark.timeout(60)
M = 1 << 20
PY = sys.executable


# -- values -------------------------------------------------------------------------
@pytest.mark.parametrize("raw, size", [
    (67108864, 67108864), ("64M", 64 * M), ("64m", 64 * M), ("64MiB", 64 * M), ("64MB", 64 * M),
    ("64 Mi", 64 * M), ("1G", 1 << 30), ("1.5G", 3 << 29), ("512K", 512 << 10), ("100", 100),
    (" 2t ", 2 << 40), (1e6, 1_000_000), ("max", None), ("Unlimited", None),
])
def test_sizes(raw, size):
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", ["64X", "", "-1", "1.2.3", "M", "64 M B", 0, -5, "0.1", True,
                                 [64], None, float("inf"), float("nan"), "9999E"])
def test_bad_sizes(raw):
    with pytest.raises(ValueError):
        parse_size(raw)


@pytest.mark.parametrize("raw, cores", [
    (0.2, 0.2), (2, 2.0), ("0.5", 0.5), ("200m", 0.2), ("20%", 0.2), ("150%", 1.5), ("max", None),
])
def test_cpu(raw, cores):
    if cores is None:
        assert parse_cpu(raw) is None
    else:
        assert parse_cpu(raw) == pytest.approx(cores)


@pytest.mark.parametrize("raw", [0, -1, 0.001, "5m", "fast", "", True, None, 5000, float("nan"), [1]])
def test_bad_cpu(raw):
    with pytest.raises(ValueError):
        parse_cpu(raw)


@pytest.mark.parametrize("raw, count", [(16, 16), ("16", 16), (16.0, 16), ("max", None)])
def test_counts(raw, count):
    assert parse_count(raw, most=100) == count


@pytest.mark.parametrize("raw", [0, -3, 1.5, "x", "1e3", True, None, 101])
def test_bad_counts(raw):
    with pytest.raises(ValueError):
        parse_count(raw, most=100)


def test_limits_parse_to_numbers_and_max_lifts_one():
    assert parse_limits("net.A", {"memory": "64M", "cpu": 0.2, "pids": 16, "nofile": 256}) == \
        {"memory": 64 * M, "cpu": 0.2, "pids": 16, "nofile": 256}
    assert parse_limits("net.A", {"memory": "max", "pids": 8}) == {"pids": 8}
    assert parse_limits("net.A", {}) == {}


@pytest.mark.parametrize("bad, words", [
    ({"memory": "lots"}, ["'net.A'", "'memory'", "'lots'"]),
    ({"cpu": -1}, ["'net.A'", "'cpu'", "at least"]),
    ({"pids": 0}, ["'net.A'", "'pids'"]),
    ({"nofile": "many"}, ["'net.A'", "'nofile'"]),
    ({"mem": "64M"}, ["'net.A'", "unknown limit 'mem'", "memory"]),
    (["memory"], ["'net.A'", "table"]),
])
def test_bad_limits_name_the_controller_and_the_key(bad, words):
    with pytest.raises(LimitError) as caught:
        parse_limits("net.A", bad)
    for word in words:
        assert word in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, InvalidRequestError)


def test_no_limits_checks_and_records_but_enforces_nothing():
    placement = NoLimits().prepare("net.A", {"memory": "64M", "cpu": "max"})
    assert placement.limits == {"memory": "64M", "cpu": "max"}
    assert placement.values == {"memory": 64 * M}
    assert placement.enforced == {"memory": "none"}
    assert placement.setup == {"procs": [], "rlimits": {}}
    with pytest.raises(LimitError):
        NoLimits().prepare("net.A", {"pids": "-"})


def test_cgroup_names_are_safe_distinct_and_carry_the_supervisor():
    me = os.getpid()
    assert leaf_name("cosihost", "net.HostnameController") == f"cosihost-{me}-net.HostnameController"
    odd = {leaf_name("cosihost", n) for n in ("a/b", "a_b", "a\nb", "..", "a b")}
    assert len(odd) == 5
    assert all("/" not in n and "\n" not in n and n.startswith(f"cosihost-{me}-") for n in odd)
    assert len(leaf_name("cosihost", "x" * 1000)) < 200


# -- the child's side ------------------------------------------------------------------
def test_a_child_that_cannot_enter_its_limits_never_runs():
    child = enter(["/nonexistent/cosihost/cgroup.procs"], {})
    done = subprocess.run([PY, "-c", "print('controller code ran')"], preexec_fn=child,
                          capture_output=True, timeout=30)
    assert done.returncode == PLACEMENT_FAILED_EXIT
    assert b"controller code ran" not in done.stdout
    assert b"cannot put the controller under its limits" in done.stderr


# -- rlimits -----------------------------------------------------------------------------
RLIMIT_CHILD = textwrap.dedent('''
    import json, resource, os
    out = {"data": resource.getrlimit(resource.RLIMIT_DATA),
           "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}
    try:
        hog = b"x" * (200 << 20)
        out["allocated"] = True
    except MemoryError:
        out["allocated"] = False
    fds = []
    try:
        for _ in range(100):
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    out["opened"] = len(fds)
    print(json.dumps(out))
''')


def test_rlimits_hold_memory_and_open_files_and_say_what_they_cannot():
    limiter = RlimitLimiter()
    placement = limiter.prepare("unit.R", {"memory": "64M", "cpu": 0.5, "pids": 8, "nofile": 40})
    assert placement.mechanism == "rlimit"
    exempt = os.getuid() == 0
    assert placement.enforced == {"memory": "rlimit", "cpu": "none", "nofile": "rlimit",
                                  "pids": "none" if exempt else "rlimit"}
    assert placement.setup["rlimits"]["RLIMIT_DATA"] == [64 * M, 64 * M]
    assert placement.setup["rlimits"]["RLIMIT_NOFILE"] == [40, 40]
    done = subprocess.run([PY, "-c", RLIMIT_CHILD], preexec_fn=limiter.preexec(placement),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["data"] == [64 * M, 64 * M] and seen["nofile"] == [40, 40]
    assert seen["allocated"] is False  # 200 MB under a 64 MB limit
    assert seen["opened"] < 40
    assert limiter.oom_killed(placement) is False
    limiter.release(placement)
    assert placement.released


# Forks up to 20 children that wait until it exits; prints how many it got.
FORKER = textwrap.dedent('''
    import os
    r, w = os.pipe()
    forked = 0
    for _ in range(20):
        try:
            pid = os.fork()
        except OSError:
            continue
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        forked += 1
    print(forked, flush=True)
''')


def test_rlimit_pids_caps_a_non_root_users_forks():
    """RLIMIT_NPROC counts all of a user's tasks and root is exempt, so this
    runs as ``nobody``: the limiter sets the user's current tasks plus
    ``pids``, and the controller's forks stop there."""
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    try:
        import pwd
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            limiter = RlimitLimiter()
            placement = limiter.prepare("unit.Forker", {"pids": 5})
            os.write(w, (placement.enforced["pids"] + "\n").encode())
            controller = os.fork()
            if controller == 0:
                try:
                    limiter.preexec(placement)()
                    sys.stdout = os.fdopen(w, "w")  # not pytest's capture
                    exec(FORKER, {})
                finally:
                    os._exit(0)
            os.waitpid(controller, 0)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        enforced, forked = fh.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert enforced == "rlimit"
    assert 1 <= int(forked) <= 4  # the controller itself is one of its 5


# -- cgroup v1, for real ---------------------------------------------------------------------
def _cgroup1() -> Cgroup1Limiter:
    if os.geteuid() != 0:
        pytest.skip("cgroup v1 tests need root")
    limiter, why = Cgroup1Limiter.find()
    if limiter is None or set(limiter.bases) != {"memory", "cpu", "pids"}:
        pytest.skip(f"no writable cgroup v1 memory, cpu and pids hierarchies: {why}")
    return limiter


@pytest.fixture
def cgroup1():
    limiter = _cgroup1()
    limiter.activate()
    yield limiter
    limiter.close()
    assert _mine(limiter) == [], "cgroups left behind"


def _mine(limiter, pid: int | None = None) -> list[Path]:
    prefix = f"cosihost-{os.getpid() if pid is None else pid}-"
    return [p for base in limiter.directories() for p in base.iterdir() if p.name.startswith(prefix)]


@pytest.fixture
def procs():
    """Start processes; every one still running is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for child in _descendants(proc.pid):
            child.kill()
        proc.kill()
        proc.wait()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_cgroup1_places_the_child_writes_its_limits_and_removes_all(cgroup1, procs):
    placement = cgroup1.prepare("unit.Sleeper", {"memory": "64M", "cpu": 0.25, "pids": 16, "nofile": 128})
    assert placement.mechanism == "cgroup1"
    assert placement.enforced == {"cpu": "cgroup1", "memory": "cgroup1", "nofile": "rlimit", "pids": "cgroup1"}
    dirs = {ctrl: Path(p) for ctrl, p in placement.cgroups.items()}
    assert {p.name for p in dirs.values()} == {f"cosihost-{os.getpid()}-unit.Sleeper"}
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(64 * M)
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (dirs["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (dirs["pids"] / "pids.max").read_text().strip() == "16"

    # A shell that leaves a background child behind when it is killed.
    proc = procs(["sh", "-c", "sleep 60 & exec sleep 61"], preexec_fn=cgroup1.preexec(placement))
    cgroup1.place(placement, proc.pid)
    orphan = wait_for(lambda: _descendants(proc.pid), message="the background sleep")[0]
    for ctrl, path in dirs.items():
        assert proc.pid in _tasks(path) and orphan.pid in _tasks(path), ctrl
    assert f"/cosihost-{os.getpid()}-unit.Sleeper" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (128, 128)

    proc.kill()
    proc.wait()
    assert orphan.is_running()
    assert cgroup1.oom_killed(placement) is False
    cgroup1.release(placement)
    wait_for(lambda: _ended(orphan), message="the orphan to end")  # release ended what was left behind
    assert not any(p.exists() for p in dirs.values())
    cgroup1.release(placement)  # twice is harmless


def _ended(proc: psutil.Process) -> bool:
    """Dead, or a zombie its new parent has not reaped yet."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _tasks(path: Path) -> list[int]:
    return [int(p) for p in (path / "cgroup.procs").read_text().split()]


def test_cgroup1_memory_limit_kills_and_is_recognised(cgroup1, procs):
    placement = cgroup1.prepare("unit.Hog", {"memory": "32M"})
    hog = procs([PY, "-c", "blocks = [b'x' * (1 << 20) for _ in range(200)]"],
                preexec_fn=cgroup1.preexec(placement))
    assert hog.wait(timeout=30) == -signal.SIGKILL
    assert cgroup1.oom_killed(placement) is True
    cgroup1.release(placement)

    # Killed for another reason: not put down to memory.
    again = cgroup1.prepare("unit.Hog", {"memory": "32M"})
    sleeper = procs(["sleep", "60"], preexec_fn=cgroup1.preexec(again))
    sleeper.kill()
    sleeper.wait()
    assert cgroup1.oom_killed(again) is False
    cgroup1.release(again)


def test_cgroup1_pids_limit_stops_forks(cgroup1, procs):
    placement = cgroup1.prepare("unit.Forker", {"pids": 5})
    forker = procs([PY, "-c", FORKER], preexec_fn=cgroup1.preexec(placement), stdout=subprocess.PIPE)
    out, _ = forker.communicate(timeout=30)
    assert int(out) == 4  # the forker is the fifth
    cgroup1.release(placement)


def test_cgroup1_max_leaves_a_limit_off(cgroup1):
    placement = cgroup1.prepare("unit.Free", {"memory": "max", "cpu": "max", "pids": "max"})
    dirs = {ctrl: Path(p) for ctrl, p in placement.cgroups.items()}
    assert int((dirs["memory"] / "memory.limit_in_bytes").read_text()) > 1 << 60
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert (dirs["pids"] / "pids.max").read_text().strip() == "max"
    assert placement.enforced == {}
    cgroup1.release(placement)


def test_cgroup1_refusals_name_the_controller_and_leave_nothing(cgroup1):
    placement = cgroup1.prepare("unit.Refused", {})
    memory = Path(placement.cgroups["memory"]) / "memory.limit_in_bytes"
    with pytest.raises(LimitError, match="'unit.Refused'.*'memory'.*refused 'lots'"):
        set_limit("unit.Refused", "memory", memory, "lots")
    with pytest.raises(OSError, match="'unit.Refused'.*'pids'") as caught:
        set_limit("unit.Refused", "pids", memory.parent / "no.such.file", "1")
    assert not isinstance(caught.value, LimitError)
    cgroup1.release(placement)
    with pytest.raises(LimitError, match="'unit.Refused'.*'nofile'.*nr_open"):
        cgroup1.prepare("unit.Refused", {"memory": "64M", "nofile": 1 << 30})
    assert _mine(cgroup1) == []


def test_cgroup1_start_removes_what_a_dead_supervisor_left(procs):
    _cgroup1()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: the "crashed supervisor"
    alive = procs(["sleep", "60"])
    left = Cgroup1Limiter.find()[0]
    stale = {base / f"cosihost-{gone.pid}-net.Old" for base in left.directories()}
    kept = {base / f"cosihost-{alive.pid}-net.Running" for base in left.directories()}
    for path in stale | kept:
        path.mkdir()
    orphan = procs(["sleep", "60"], preexec_fn=enter([str(p / "cgroup.procs") for p in stale], {}))
    assert all(orphan.pid in _tasks(p) for p in stale)

    limiter = Cgroup1Limiter.find()[0]
    try:
        limiter.activate()
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)  # its supervisor still runs
    finally:
        limiter.close()
        for path in kept:
            path.rmdir()


def test_choose_takes_the_best_mechanism_here():
    limiter, notes = limits.survey()
    try:
        v2, _ = Cgroup2Limiter.find()
        v1, _ = Cgroup1Limiter.find()
        if v2 is not None and set(v2.bases) == {"memory", "cpu", "pids"}:
            assert limiter.mechanism == "cgroup2"
        elif v1 is not None and os.geteuid() == 0:
            assert limiter.mechanism == "cgroup1", notes
        else:
            assert limiter.mechanism in ("cgroup2", "rlimit"), notes
        if limiter.mechanism != "cgroup2":
            assert any(note.startswith("cgroup2: ") for note in notes)
    finally:
        limiter.close()


# -- cgroup v2 ------------------------------------------------------------------------------
class FakeKernel(Cgroup2Limiter):
    """Stands in for cgroupfs where a plain directory cannot: a new cgroup
    comes with its interface files, and rmdir takes them along. Writing
    and reading the files is left to the code under test."""

    FILES = {"cgroup.procs": "", "cgroup.type": "domain\n", "cgroup.controllers": "cpu memory pids\n",
             "cgroup.subtree_control": "", "memory.max": "max\n", "memory.oom.group": "0\n",
             "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "cpu.max": "max 100000\n",
             "pids.max": "max\n"}

    def _mkdir(self, path: Path) -> None:
        path.mkdir()
        for name, text in self.FILES.items():
            (path / name).write_text(text)

    def _rmdir(self, path: Path) -> None:
        for name in self.FILES:
            (path / name).unlink(missing_ok=True)
        path.rmdir()


def _fake_own(tmp_path: Path, *, procs: str = "") -> Path:
    own = tmp_path / "own"
    FakeKernel(own, [])._mkdir(own)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (own / "cgroup.procs").write_text(procs)
    return own


def test_cgroup2_writes_the_files_it_should(tmp_path, procs):
    own = _fake_own(tmp_path, procs=f"{os.getpid()}\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    FakeKernel(own, [])._mkdir(own / f"cosihost-{gone.pid}-net.Old")
    limiter = FakeKernel(own, ["memory", "cpu", "pids"])
    limiter.activate()
    # The supervisor moved into a leaf of its own, then enabled the controllers.
    assert (own / "supervisor" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert not (own / f"cosihost-{gone.pid}-net.Old").exists()

    placement = limiter.prepare("net.A", {"memory": "64M", "cpu": 0.25, "pids": 16, "nofile": 100})
    leaf = own / f"cosihost-{os.getpid()}-net.A"
    assert placement.paths == [str(leaf)]
    assert placement.enforced == {"cpu": "cgroup2", "memory": "cgroup2", "nofile": "rlimit", "pids": "cgroup2"}
    assert (leaf / "memory.max").read_text() == str(64 * M)
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "pids.max").read_text() == "16"
    assert placement.setup == {"procs": [str(leaf / "cgroup.procs")], "rlimits": {"RLIMIT_NOFILE": [100, 100]}}

    child = procs([PY, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))"],
                  preexec_fn=limiter.preexec(placement), stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert out.strip() == b"(100, 100)"
    assert (leaf / "cgroup.procs").read_text() == "0"  # the child wrote itself in

    assert limiter.oom_killed(placement) is False
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert limiter.oom_killed(placement) is True
    limiter.release(placement)
    assert not leaf.exists()

    lifted = limiter.prepare("net.B", {"memory": "max", "cpu": "max", "pids": "max"})
    leaf = Path(lifted.paths[0])
    assert [(leaf / f).read_text() for f in ("memory.max", "cpu.max", "pids.max")] == \
        ["max", "max 100000", "max"]
    limiter.close()
    assert not leaf.exists()
    # Back where it was, with the controllers it enabled disabled again.
    assert (own / "cgroup.subtree_control").read_text() == "-memory -cpu -pids"
    assert (own / "cgroup.procs").read_text() == str(os.getpid())
    assert not (own / "supervisor").exists()


def test_cgroup2_without_controllers_still_gives_each_controller_a_cgroup(tmp_path):
    own = _fake_own(tmp_path, procs=f"{os.getpid()}\n")
    (own / "cgroup.controllers").write_text("")
    limiter = FakeKernel(own, [])
    limiter.activate()
    assert not (own / "supervisor").exists()  # nothing to enable: no need to move
    assert (own / "cgroup.subtree_control").read_text() == ""
    placement = limiter.prepare("net.A", {"memory": "64M", "cpu": 0.5, "nofile": 64})
    leaf = own / f"cosihost-{os.getpid()}-net.A"
    assert placement.mechanism == "cgroup2" and placement.paths == [str(leaf)]
    assert placement.enforced == {"cpu": "none", "memory": "rlimit", "nofile": "rlimit"}
    assert placement.setup == {"procs": [str(leaf / "cgroup.procs")],
                               "rlimits": {"RLIMIT_DATA": [64 * M, 64 * M], "RLIMIT_NOFILE": [64, 64]}}
    assert (leaf / "memory.max").read_text() == "max\n"  # not touched
    limiter.close()
    assert not leaf.exists()


def test_cgroup2_found_only_in_a_writable_delegated_subtree(tmp_path):
    own = _fake_own(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n")
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/own\n")
    found, why = Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert found is not None and why == ""
    assert found.base == own and set(found.bases) == {"memory", "cpu", "pids"}
    assert found.root_cgroup is False

    (own / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")  # a shell's scope: not ours alone
    found, why = Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert found is None and "other process" in why

    # Without controllers a subtree still places (and cleans up); the limits go to rlimits.
    (own / "cgroup.controllers").write_text("hugetlb\n")
    found, why = Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert found is not None and found.bases == {} and found.directories() == [own]
    assert "offers none of memory, cpu, pids" in why and "hugetlb" in why and "rlimit" in why
    (own / "cgroup.controllers").write_text("memory hugetlb\n")
    assert Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))[0] is None  # the shell
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    found, why = Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert set(found.bases) == {"memory"} and "offers memory of memory, cpu, pids" in why

    cgroup.write_text("0::/elsewhere\n")
    assert Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))[0] is None
    mountinfo.write_text("")
    assert "no cgroup2" in Cgroup2Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))[1]


def test_cgroup1_found_below_a_mount_that_shows_part_of_the_tree(tmp_path):
    """In a container the hierarchy's mount root is the container's cgroup."""
    lines = []
    for n, ctrl in enumerate(("memory", "cpu,cpuacct", "pids")):
        point = tmp_path / ctrl
        (point / "sub").mkdir(parents=True)
        lines.append(f"{30 + n} 20 0:{40 + n} /docker/abc {point} rw,relatime - cgroup cgroup rw,{ctrl}")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("5:memory:/docker/abc/sub\n3:cpu,cpuacct:/docker/abc/sub\n2:pids:/docker/abc/sub\n0::/\n")
    found, why = Cgroup1Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert found is not None and why == ""
    assert found.bases == {"memory": tmp_path / "memory" / "sub", "cpu": tmp_path / "cpu,cpuacct" / "sub",
                           "pids": tmp_path / "pids" / "sub"}
    cgroup.write_text("2:pids:/docker/abc/sub\n")
    found, why = Cgroup1Limiter.find(mountinfo=str(mountinfo), cgroup_file=str(cgroup))
    assert found is not None and set(found.bases) == {"pids"} and "memory" in why


V2_HELPER = textwrap.dedent('''
    import json, os, subprocess, sys
    from pathlib import Path
    from cosihost.supervisor.limits.cgroup2 import Cgroup2Limiter
    limiter, why = Cgroup2Limiter.find()
    if limiter is None:
        print(json.dumps({"skip": why}))
        sys.exit(0)
    limiter.activate()
    out = {"controllers": sorted(limiter.bases), "self": Path("/proc/self/cgroup").read_text()}
    placement = limiter.prepare("unit.V2", {"memory": "64M", "cpu": 0.2, "pids": 16, "nofile": 128})
    out["enforced"] = placement.enforced
    leaf = Path(placement.paths[0])
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & exec sleep 61"], preexec_fn=limiter.preexec(placement))
    while len(leaf.joinpath("cgroup.procs").read_text().split()) < 2:
        pass  # until the background sleep has started
    out["child"] = Path(f"/proc/{shell.pid}/cgroup").read_text()
    out["files"] = {f: (leaf / f).read_text().strip() for f in ("memory.max", "cpu.max", "pids.max")
                    if (leaf / f).exists()}
    shell.kill(); shell.wait()
    limiter.release(placement)  # ends the background sleep too
    out["leaf"], out["leaf_gone"] = str(leaf), not leaf.exists()
    if "memory" in limiter.bases:
        hog_placement = limiter.prepare("unit.V2Hog", {"memory": "32M"})
        hog = subprocess.Popen([sys.executable, "-c", "b = [b'x' * (1 << 20) for _ in range(200)]"],
                               preexec_fn=limiter.preexec(hog_placement))
        out["hog"], out["oom"] = hog.wait(), limiter.oom_killed(hog_placement)
        limiter.release(hog_placement)
    limiter.close()
    out["left"] = sorted(p.name for p in limiter.base.iterdir() if p.name.startswith(f"cosihost-{os.getpid()}-"))
    out["moved_back"] = limiter.moved_to is None and not limiter.enabled
    print(json.dumps(out))
''')


def test_cgroup2_for_real_where_a_writable_subtree_exists():
    """Runs in a child (the limiter may move its own process), under
    systemd-run with Delegate=yes where systemd runs, else in our own cgroup.
    Limits are checked for the controllers the subtree offers."""
    mounted = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - cgroup2 " in line]
    if not mounted:
        pytest.skip("no cgroup2 file system is mounted")
    cmd = [PY, "-c", V2_HELPER]
    if Path("/run/systemd/system").is_dir() and shutil.which("systemd-run"):
        cmd = ["systemd-run", "--quiet", "--scope", "-p", "Delegate=yes",
               *([] if os.geteuid() == 0 else ["--user"]), *cmd]
    env = dict(os.environ, PYTHONPATH=str(Path(limits.__file__).parents[3]))
    done = subprocess.run(cmd, capture_output=True, timeout=45, env=env)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"no writable cgroup2 subtree here: {out['skip']}")
    assert out["child"].strip().endswith("/" + Path(out["leaf"]).name)
    assert out["leaf_gone"]
    assert out["left"] == [] and out["moved_back"]
    for key in ("memory", "cpu", "pids"):
        fallback = "none" if key == "cpu" or (key == "pids" and os.getuid() == 0) else "rlimit"
        assert out["enforced"][key] == ("cgroup2" if key in out["controllers"] else fallback)
    expected = {"memory": ("memory.max", str(64 * M)), "cpu": ("cpu.max", "20000 100000"),
                "pids": ("pids.max", "16")}
    assert out["files"] == dict(expected[c] for c in out["controllers"])
    if "memory" in out["controllers"]:
        assert out["hog"] == -signal.SIGKILL and out["oom"] is True
    if set(out["controllers"]) != {"memory", "cpu", "pids"}:
        pytest.skip(f"placement checked on real cgroup2, but no delegated subtree with memory, cpu and "
                    f"pids here to check its limits (it offers {out['controllers'] or 'none of them'})")
