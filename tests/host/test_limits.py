"""Per-controller limits, through real supervisors on real cgroups.

These need a cgroup mechanism a supervisor started by the tests can use
(root with the v1 memory, cpu and pids hierarchies, or cgroup v2 with those
controllers at the root of the hierarchy) and skip, saying why, where there
is none. Every supervisor's cgroups must be gone once it has stopped, and a
crashed supervisor's are removed by the next one to start.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from cosihost import NotFoundError, Resource
from cosihost.supervisor.limits.cgroup1 import Cgroup1Limiter
from cosihost.supervisor.limits.cgroup2 import Cgroup2Limiter
from cosihost.supervisor.limits.cgroupfs import mounts, own_cgroups, resolve
from cosihost.testing import wait_for

pytestmark = pytest.mark.timeout(60)

CONTROLLERS = ("memory", "cpu", "pids")


def _bases() -> tuple[str, dict[str, Path]]:
    """Where supervisors started from this process make cgroups, or skip.

    A supervisor can use a cgroup v2 subtree only alone in it (this test
    process shares it) or at the root of the hierarchy, where the "no
    internal processes" rule does not apply."""
    v2, why2 = Cgroup2Limiter.find()
    if v2 is not None and set(v2.bases) >= set(CONTROLLERS):
        if v2.root_cgroup:
            return "cgroup2", v2.bases
        why2 = f"{v2.base} would be shared by the supervisor with this test process"
    v1, why1 = Cgroup1Limiter.find()
    if v1 is not None and set(v1.bases) >= set(CONTROLLERS):
        return "cgroup1", v1.bases
    pytest.skip(f"no cgroup with memory, cpu and pids a supervisor started here could use "
                f"(cgroup2: {why2 or 'partial'}; cgroup1: {why1 or 'partial'})")


@pytest.fixture
def cgroups(supervisor_factory):
    """``(mechanism, bases, make)``: ``make`` starts a supervisor like
    ``supervisor_factory``; after the test every one of them is stopped and
    none of their cgroups may remain."""
    mechanism, bases = _bases()
    made = []

    def make(**kwargs):
        sup = supervisor_factory(start=False, **kwargs)
        made.append(sup)
        return sup.start()

    yield mechanism, bases, make
    for sup in made:
        sup.stop()
        assert leaves(bases, sup.pid) == [], "cgroups left behind after the supervisor stopped"
        if mechanism == "cgroup2":
            assert not (next(iter(bases.values())) / "supervisor").exists()


def leaves(bases: dict[str, Path], pid: int) -> list[Path]:
    """Every cgroup a supervisor made for its controllers."""
    found = []
    for base in dict.fromkeys(bases.values()):
        found += sorted(p for p in base.iterdir() if p.name.startswith(f"cosihost-{pid}-"))
    return found


def cgroup_of(pid: int, ctrl: str, mechanism: str) -> Path:
    """The directory of the cgroup ``pid`` is in for controller ``ctrl``."""
    lines = own_cgroups(f"/proc/{pid}/cgroup")
    if mechanism == "cgroup2":
        path = next(c[2] for c in lines if c[0] == "0")
        mount = mounts("cgroup2")[0]
    else:
        path = next(c[2] for c in lines if ctrl in c[1])
        mount = next(m for m in mounts("cgroup") if ctrl in m[2])
    found = resolve(mount[0], mount[1], path)
    assert found is not None
    return found


def limit_file(pid: int, key: str, mechanism: str) -> str:
    """The value of a limit as the kernel holds it for ``pid``'s cgroup."""
    files = {"cgroup1": {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "pids.max"},
             "cgroup2": {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}}[mechanism]
    return (cgroup_of(pid, key, mechanism) / files[key]).read_text().split()[0]


def ended(pid: int) -> bool:
    """Dead, or a zombie nobody has reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def spec_of(client, type_: str, rid: str):
    try:
        return client.get("default", type_, rid).spec
    except NotFoundError:
        return None


# A controller that allocates 300 MB, reporting every 4 MB it got.
HOG = '''
from cosihost import Controller, Output

class Hog(Controller):
    name = "test.Hog"
    outputs = [Output("Hogs.test.cosihost.dev")]
    limits = {"memory": "64M", "nofile": 256}

    def reconcile(self, rt):
        blocks = []
        for n in range(1, 76):
            blocks.append(b"x" * (4 << 20))  # written, so really resident
            rt.modify("default", "Hogs.test.cosihost.dev", "progress",
                      lambda spec, n=n: spec.update(mb=max(spec.get("mb", 0), 4 * n)))
'''

DOUBLER = '''
from cosihost import Controller, Input, Output

class Doubler(Controller):
    name = "test.Doubler"
    inputs = [Input("default", "Ints.test.cosihost.dev")]
    outputs = [Output("Doubles.test.cosihost.dev")]
    limits = {"memory": "256M", "cpu": 1, "pids": 64}

    def reconcile(self, rt):
        for r in rt.list("default", "Ints.test.cosihost.dev"):
            value = r.spec["value"]
            rt.modify("default", "Doubles.test.cosihost.dev", r.metadata.id,
                      lambda spec: spec.update(value=value * 2))
'''

# Forks 100 children that wait on a pipe, reports how many it got, lets them go.
BOMB = '''
import os
from cosihost import Controller, Output

class Bomb(Controller):
    name = "test.Bomb"
    outputs = [Output("Bombs.test.cosihost.dev")]
    limits = {"pids": 16}

    def reconcile(self, rt):
        r, w = os.pipe()
        children, refused = [], 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError:
                refused += 1
                continue
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # until the parent closes its end
                os._exit(0)
            children.append(pid)
        threads = len(os.listdir("/proc/self/task"))
        rt.modify("default", "Bombs.test.cosihost.dev", "result",
                  lambda spec: spec.update(forked=len(children), refused=refused, threads=threads))
        os.close(w)
        os.close(r)
        for pid in children:
            os.waitpid(pid, 0)
        rt.modify("default", "Bombs.test.cosihost.dev", "result", lambda spec: spec.update(reaped=True))
'''

# Reports the cgroups it was in when its module was imported, and its rlimit.
WHERE = '''
import resource
from cosihost import Controller, Output

AT_IMPORT = open("/proc/self/cgroup").read()
NOFILE = list(resource.getrlimit(resource.RLIMIT_NOFILE))

class Where(Controller):
    name = "test.Where"
    outputs = [Output("Wheres.test.cosihost.dev")]
    limits = {"memory": "128M", "nofile": 200}

    def reconcile(self, rt):
        rt.modify("default", "Wheres.test.cosihost.dev", "here",
                  lambda spec: spec.update(cgroup=AT_IMPORT, nofile=NOFILE))
'''

# Spins a thread forever; the limited one at 0.2 cores.
SPINNERS = '''
import threading
from cosihost import Controller, Output

def spin():
    while True:
        pass

class Spinner(Controller):
    name = "test.Spinner"
    outputs = [Output("Spins.test.cosihost.dev")]
    limits = {"cpu": 0.2}
    started = False

    def reconcile(self, rt):
        if not self.started:
            self.started = True
            threading.Thread(target=spin, daemon=True).start()

class FreeSpinner(Spinner):
    name = "test.FreeSpinner"
    outputs = [Output("FreeSpins.test.cosihost.dev")]
    limits = {}
'''


def test_memory_hog_is_killed_by_its_limit_and_restarted_while_others_run_on(cgroups):
    mechanism, bases, make = cgroups
    sup = make(controllers={"hog": HOG, "double": DOUBLER})
    doubler = sup.controller_pid("test.Doubler")
    assert limit_file(doubler, "memory", mechanism) == str(256 << 20)

    hog = sup.wait_status("test.Hog", lambda s: s["restarts"] >= 2 and
                          (s["last_exit"] or {}).get("reason") == "memory limit")
    assert hog["last_exit"]["signal"] == "SIGKILL"
    assert hog["last_exit"]["code"] is None
    assert hog["limits"] == {"memory": "64M", "nofile": 256}
    assert hog["mechanism"] == mechanism

    with sup.client() as c:
        reached = c.get("default", "Hogs.test.cosihost.dev", "progress").spec["mb"]
        assert 4 <= reached < 64, f"the hog got {reached} MB under a 64 MB limit"
        # The doubler keeps converging while the hog is killed and restarted.
        for i in range(3):
            c.create(Resource("default", "Ints.test.cosihost.dev", f"n{i}", {"value": i + 10}))
        for i in range(3):
            assert wait_for(lambda i=i: spec_of(c, "Doubles.test.cosihost.dev", f"n{i}"),
                            message=f"double n{i}") == {"value": 2 * (i + 10)}
    sup.wait_status("test.Hog", lambda s: s["restarts"] >= 3)
    status = sup.statuses()["test.Doubler"]
    assert (status["pid"], status["restarts"], status["state"]) == (doubler, 0, "running")
    print(f"\nhog: killed by the {mechanism} memory limit after reporting {reached} MB of 300 MB "
          f"(limit 64 MB), {hog['restarts']}+ restarts")


def test_fork_bomb_stops_at_its_pids_limit(cgroups):
    mechanism, bases, make = cgroups
    sup = make(controllers={"bomb": BOMB})
    pid = sup.controller_pid("test.Bomb")
    assert limit_file(pid, "pids", mechanism) == "16"
    with sup.client() as c:
        result = wait_for(lambda: (spec_of(c, "Bombs.test.cosihost.dev", "result") or {}).get("reaped") and
                          spec_of(c, "Bombs.test.cosihost.dev", "result"), message="the bomb's count")
    assert 1 <= result["forked"] < 16
    assert result["forked"] + result["threads"] <= 16
    assert result["refused"] == 100 - result["forked"]
    assert sup.ping()["ready"]
    status = sup.statuses()["test.Bomb"]
    assert (status["pid"], status["state"], status["restarts"]) == (pid, "running", 0)
    assert psutil.Process(pid).children() == []
    print(f"\nbomb: {result['forked']} of 100 forks succeeded beside {result['threads']} threads "
          f"(pids limit 16), {result['refused']} refused")


def test_cpu_spinner_is_throttled_to_its_share(cgroups):
    mechanism, bases, make = cgroups
    sup = make(controllers={"spin": SPINNERS})
    limited = psutil.Process(sup.controller_pid("test.Spinner"))
    free = psutil.Process(sup.controller_pid("test.FreeSpinner"))
    assert limit_file(limited.pid, "cpu", mechanism) == "20000"  # µs per 100 ms

    def cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def throttled() -> int:
        stat = (cgroup_of(limited.pid, "cpu", mechanism) / "cpu.stat").read_text().split()
        return int(stat[stat.index("nr_throttled") + 1])

    start, free_start, throttled_start, began = cpu(limited), cpu(free), throttled(), time.monotonic()
    # Until the limited one has used 0.4 s of CPU: about 2 s at 0.2 cores, 0.4 s if unthrottled.
    wait_for(lambda: cpu(limited) - start >= 0.4, timeout=20, interval=0.05, message="0.4 s of CPU")
    wall = time.monotonic() - began
    share = (cpu(limited) - start) / wall
    free_share = (cpu(free) - free_start) / wall
    periods = throttled() - throttled_start
    print(f"\nspinner: {share:.3f} cores with cpu 0.2 over {wall:.2f} s, throttled in {periods} periods; "
          f"an unlimited spinner beside it: {free_share:.3f} cores")
    assert share <= 0.35
    # The kernel did the holding back (on a busy machine, a low share alone proves little).
    assert periods >= 5


def test_cgroups_go_when_a_controller_ends_and_when_the_supervisor_stops(cgroups):
    mechanism, bases, make = cgroups
    sup = make(controllers={"double": DOUBLER, "bomb": BOMB})
    doubler, bomb = sup.controller_pid("test.Doubler"), sup.controller_pid("test.Bomb")
    mine = leaves(bases, sup.pid)
    assert {p.name for p in mine} == {f"cosihost-{sup.pid}-test.Doubler", f"cosihost-{sup.pid}-test.Bomb"}
    assert cgroup_of(bomb, "pids", mechanism).name == f"cosihost-{sup.pid}-test.Bomb"

    (sup.controllers_dir / "bomb.py").unlink()
    with sup.client(admin=True) as c:
        c.call("reload")
    wait_for(lambda: ended(bomb), message="the bomb to end")
    wait_for(lambda: {p.name for p in leaves(bases, sup.pid)} == {f"cosihost-{sup.pid}-test.Doubler"},
             message="the bomb's cgroups to go")
    assert sup.statuses()["test.Doubler"]["pid"] == doubler
    sup.stop()
    assert leaves(bases, sup.pid) == []


def test_a_crashed_supervisors_cgroups_are_removed_by_the_next_one(cgroups):
    mechanism, bases, make = cgroups
    first = make(controllers={"double": DOUBLER})
    controller = first.controller_pid("test.Doubler")
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait()
    wait_for(lambda: ended(controller), message="the orphan to die")
    assert leaves(bases, first.pid) != []  # nobody was left to remove them
    make(controllers={})
    assert leaves(bases, first.pid) == []


def test_config_overrides_the_class_limits(cgroups):
    mechanism, bases, make = cgroups
    sup = make(controllers={"double": DOUBLER}, config='''
        [limits."test.Doubler"]
        memory = "96M"
        pids = "max"
    ''')
    pid = sup.controller_pid("test.Doubler")
    status = sup.statuses()["test.Doubler"]
    assert status["limits"] == {"memory": "96M", "cpu": 1, "pids": "max"}
    assert limit_file(pid, "memory", mechanism) == str(96 << 20)
    assert limit_file(pid, "pids", mechanism) == "max"
    assert limit_file(pid, "cpu", mechanism) == "100000"


def test_a_bad_limit_refuses_the_controller_and_nothing_else(cgroups):
    mechanism, bases, make = cgroups
    bad = DOUBLER.replace('"test.Doubler"', '"test.Bad"').replace('"memory": "256M"', '"memory": "lots"') \
                 .replace("Doubles.test", "BadDoubles.test")
    sup = make(controllers={"double": DOUBLER, "bad": bad})
    status = sup.wait_status("test.Bad", lambda s: s["state"] == "refused")
    assert "test.Bad" in status["reason"] and "memory" in status["reason"]
    assert sup.statuses()["test.Doubler"]["state"] == "running"
    assert {p.name for p in leaves(bases, sup.pid)} == {f"cosihost-{sup.pid}-test.Doubler"}


def test_controller_code_runs_inside_its_cgroup_from_the_first_line(cgroups):
    """The process joins its cgroups and sets its rlimits before the
    controller's module is even imported."""
    mechanism, bases, make = cgroups
    sup = make(controllers={"where": WHERE})
    with sup.client() as c:
        seen = wait_for(lambda: spec_of(c, "Wheres.test.cosihost.dev", "here"), message="the report")
    leaf = f"/cosihost-{sup.pid}-test.Where"
    lines = own_cgroups_text(seen["cgroup"])
    if mechanism == "cgroup2":
        assert lines["0"].endswith(leaf)
    else:
        for ctrl in CONTROLLERS:
            assert next(path for ctrls, path in lines.values() if ctrl in ctrls).endswith(leaf), ctrl
    assert seen["nofile"] == [200, 200]
    status = sup.statuses()["test.Where"]
    assert status["limits"] == {"memory": "128M", "nofile": 200}
    assert status["mechanism"] == mechanism


def own_cgroups_text(text: str) -> dict[str, tuple[set[str], str]]:
    found = {}
    for line in text.splitlines():
        hid, ctrls, path = line.split(":", 2)
        found[hid] = (set(ctrls.split(",")), path)
    return found
