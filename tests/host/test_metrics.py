"""Prometheus metrics: a real supervisor with real controller processes,
scraped over HTTP and parsed with prometheus-client's own parser. The
figures must move when a controller works, fails, is killed and comes back,
and the supervisor's request, event and subscriber figures must follow
what clients do."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cosihost import AccessDeniedError, NotFoundError, Resource
from cosihost.testing import SupervisorProcess, wait_for

INT = "Ints.test.cosihost.dev"
STR = "Strs.test.cosihost.dev"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

CONFIG = """
[timing]
heartbeat = 0.1
backoff_base = 0.02
backoff_cap = 0.1
usage_every = 0.2

[metrics]
listen = "127.0.0.1:0"
"""

WORKER = '''
from cosihost import Controller, Input, Output

class Worker(Controller):
    name = "test.Worker"
    inputs = [Input("work-in", "Ints.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]

    def reconcile(self, rt):
        for res in rt.list("work-in", "Ints.test.cosihost.dev"):
            if res.spec.get("fail"):
                raise RuntimeError("asked to fail")
            value = str(res.spec["value"])
            rt.modify("work-out", "Strs.test.cosihost.dev", res.metadata.id, lambda s: s.update(value=value))
'''

QWORKER = '''
from cosihost import Input, Output, QController

class QWorker(QController):
    name = "test.QWorker"
    primary = [Input("q-in", "Ints.test.cosihost.dev")]
    outputs = [Output("QStrs.test.cosihost.dev")]

    def reconcile(self, rt, ptr):
        value = str(rt.get(*ptr).spec["value"])
        rt.modify("q-out", "QStrs.test.cosihost.dev", ptr.id, lambda s: s.update(value=value))
'''


class Scrape:
    """One scrape of the endpoint, parsed."""

    def __init__(self, address: str) -> None:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
            self.text = resp.read().decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in self.families.values() for s in f.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def of(self, name: str, controller: str = "test.Worker") -> float:
        value = self.value(name, controller=controller)
        return -1.0 if value is None else value


def metrics_address(sup: SupervisorProcess) -> str:
    path = sup.runtime_dir / "metrics.addr"
    return wait_for(lambda: path.is_file() and path.read_text().strip(), message="metrics.addr")


def scrape_until(address: str, check: Any, message: str, timeout: float = 20) -> Scrape:
    def attempt() -> Scrape | None:
        m = Scrape(address)
        return m if check(m) else None
    return wait_for(attempt, timeout=timeout, message=message)


def test_controller_figures_move_when_it_works_fails_and_is_killed(supervisor_factory):
    sup = supervisor_factory(config=CONFIG, controllers={"worker": WORKER})
    address = metrics_address(sup)
    first = scrape_until(address, lambda m: m.value("cosihost_controller_state", controller="test.Worker",
                                                    state="running") == 1
                         and m.of("cosihost_controller_reconciles_total") >= 1, "the worker running")
    assert first.families["cosihost_controller_reconciles"].type == "counter"
    with sup.client() as c:
        for i in range(5):
            c.create(Resource("work-in", INT, f"n{i}", {"value": i}))
        worked = scrape_until(address, lambda m: m.of("cosihost_controller_writes_total") >= 5
                              and m.of("cosihost_controller_events_received_total") >= 5,
                              "the worker's writes and events")
        assert worked.of("cosihost_controller_reconciles_total") > first.of("cosihost_controller_reconciles_total")
        assert worked.of("cosihost_controller_reads_total") > first.of("cosihost_controller_reads_total")
        assert worked.of("cosihost_controller_cache_resyncs_total") == 0
        assert worked.of("cosihost_controller_cpu_seconds_total") >= 0  # present (a forked child may use < 1 tick)
        assert worked.of("cosihost_controller_memory_rss_bytes") > 1 << 20
        # Every reconcile is timed, in the same heartbeat as it is counted.
        count = worked.of("cosihost_controller_reconcile_duration_seconds_count")
        assert count == worked.of("cosihost_controller_reconciles_total") + \
            worked.of("cosihost_controller_reconcile_errors_total")
        buckets = [s.value for s in worked.families["cosihost_controller_reconcile_duration_seconds"].samples
                   if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == count

        c.create(Resource("work-in", INT, "bad", {"value": 0, "fail": True}))
        failing = scrape_until(address, lambda m: m.of("cosihost_controller_reconcile_errors_total") >= 1
                               and m.of("cosihost_controller_failing_reconciles") >= 1
                               and m.of("cosihost_controller_pending") == 1, "reconcile errors counted")
        assert failing.value("cosihost_controller_state", controller="test.Worker", state="running") == 1
        c.destroy("work-in", INT, "bad")
        healed = scrape_until(address, lambda m: m.of("cosihost_controller_failing_reconciles") == 0
                              and m.of("cosihost_controller_pending") == 0, "the worker healed")
        assert healed.of("cosihost_controller_reconcile_errors_total") >= \
            failing.of("cosihost_controller_reconcile_errors_total")
        assert healed.of("cosihost_controller_restarts_total") == 0

    pid = sup.controller_pid("test.Worker")
    os.kill(pid, signal.SIGKILL)
    # The new process reports its own counters, from 0: its errors are 0 again.
    back = scrape_until(address, lambda m: m.of("cosihost_controller_restarts_total") == 1
                        and m.of("cosihost_controller_start_time_seconds")
                        > healed.of("cosihost_controller_start_time_seconds")
                        and m.of("cosihost_controller_reconcile_errors_total") == 0
                        and m.of("cosihost_controller_reconciles_total") >= 1, "the worker back")
    assert back.value("cosihost_controller_state", controller="test.Worker", state="running") == 1
    assert back.of("cosihost_controller_memory_rss_bytes") > 0
    assert sup.controller_pid("test.Worker") != pid


def test_supervisor_figures_follow_requests_events_and_subscribers(supervisor_factory):
    sup = supervisor_factory(config=CONFIG, controllers={"worker": WORKER})
    address = metrics_address(sup)
    assert sup.ping()["metrics"] == address
    before = scrape_until(address, lambda m: m.value("cosihost_supervisor_ready") == 1, "ready")
    requests = "cosihost_supervisor_requests_total"

    def count(m: Scrape, op: str, result: str) -> float:
        return m.value(requests, op=op, result=result) or 0.0

    with sup.client() as c:
        with pytest.raises(NotFoundError):
            c.get("work-in", INT, "missing")
        c.create(Resource("work-in", INT, "one", {"value": 1}))
        with pytest.raises(AccessDeniedError):  # the worker's output: a user may not write it
            c.create(Resource("work-out", STR, "forged", {"value": "x"}))
        # A scrape's figures are taken by the loop after everything it answered before.
        after = Scrape(address)
        assert count(after, "get", "not-found") == count(before, "get", "not-found") + 1
        assert count(after, "create", "ok") >= count(before, "create", "ok") + 1
        assert count(after, "create", "access-denied") == count(before, "create", "access-denied") + 1
        assert count(after, "heartbeat", "ok") > 0
        assert after.value("cosihost_supervisor_events_published_total") > \
            before.value("cosihost_supervisor_events_published_total")
        assert after.value("cosihost_supervisor_request_duration_seconds_count", op="get") >= 1
        assert after.value("cosihost_supervisor_request_duration_seconds_sum", op="get") > 0
        assert after.value("cosihost_supervisor_figures_age_seconds") < 2
        assert after.families["cosihost_supervisor_request_duration_seconds"].type == "histogram"

        subscribers = after.value("cosihost_supervisor_subscribers")
        assert subscribers >= 1  # the worker's events connection
        watch = c.watch_kind("work-in", INT)
        scrape_until(address, lambda m: m.value("cosihost_supervisor_subscribers") == subscribers + 1,
                     "the watch's connection counted")
        watch.close()
        scrape_until(address, lambda m: m.value("cosihost_supervisor_subscribers") == subscribers,
                     "the watch's connection gone")
    lag = scrape_until(address, lambda m: m.value("cosihost_supervisor_loop_lag_seconds_count") >
                       before.value("cosihost_supervisor_loop_lag_seconds_count"), "the loop's timers measured")
    assert lag.value("cosihost_supervisor_process_resident_memory_bytes") > 0


def test_a_queue_controller_reports_its_queue(supervisor_factory):
    sup = supervisor_factory(config=CONFIG, controllers={"qworker": QWORKER})
    with sup.client() as c:
        for i in range(5):
            c.create(Resource("q-in", INT, f"q{i}", {"value": i}))
    m = scrape_until(metrics_address(sup),
                     lambda m: m.of("cosihost_controller_items_processed_total", "test.QWorker") >= 5
                     and m.of("cosihost_controller_queue_length", "test.QWorker") == 0, "five items processed")
    assert m.of("cosihost_controller_busy_milliseconds_total", "test.QWorker") >= 0
    assert m.value("cosihost_controller_reconcile_duration_seconds_count", controller="test.QWorker") >= 5


def test_a_throttled_controller_counts_its_refused_writes(supervisor_factory):
    from test_rate_limit import SPAMMER, WRITES   # writes in a tight loop, over its limit of 20 a second

    sup = supervisor_factory(config=CONFIG, controllers={"spammer": SPAMMER, "worker": WORKER})
    with sup.client() as c:
        c.create(Resource("work-in", INT, "w", {"value": 1}))
        wait_for(lambda: [r.spec.get("n") for r in c.list("spam", "Spam.test.cosihost.dev")] == [WRITES],
                 timeout=30, message="the spammer's last write")

    def throttled(m: Scrape) -> float:
        return m.of("cosihost_controller_throttled_writes_total", "test.Spammer")
    m = scrape_until(metrics_address(sup),
                     lambda m: 0 < throttled(m) == sup.statuses()["test.Spammer"]["throttled"]
                     and m.of("cosihost_controller_reconciles_total") >= 1,
                     "the spammer's refused writes, as its status counts them")
    assert m.of("cosihost_controller_throttled_writes_total") == 0     # the worker kept its pace


def test_every_metric_is_documented(supervisor_factory):
    sup = supervisor_factory(config=CONFIG, controllers={"worker": WORKER, "qworker": QWORKER})
    m = scrape_until(metrics_address(sup), lambda m: m.of("cosihost_controller_reconciles_total") >= 1,
                     "the worker reconciled")
    served = {name for name in m.families
              if name.startswith("cosihost_") and not name.startswith("cosihost_supervisor_process_")}
    documented = set(re.findall(r"^\| `(cosihost_[a-z_]+)`", DOCS.read_text(), re.M))
    served_as_shown = {name + "_total" if m.families[name].type == "counter" else name for name in served}
    assert served_as_shown == documented - {n for n in documented if n.startswith("cosihost_supervisor_process_")}


def run_cli(tmp_path: Path, *args: str, config: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cosihost", "run", "--runtime-dir", str(tmp_path / "run"),
           "--state-dir", str(tmp_path / "state"), "--controllers", str(tmp_path / "none"), *args]
    if config is not None:
        (tmp_path / "config.toml").write_text(config)
        cmd += ["--config", str(tmp_path / "config.toml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("config, args, expected", [
    ('[metrics]\nlisten = "localhost"\n', (), "config: [metrics] listen: 'localhost' is not HOST:PORT"),
    ('[metrics]\nlisten = "127.0.0.1:65536"\n', (), "is not HOST:PORT"),
    ('[metrics]\nlisten = "::1:9464"\n', (), "is not HOST:PORT"),
    ("[metrics]\nlisten = 9464\n", (), 'config: [metrics] listen must be a string "HOST:PORT"'),
    ("[metrics]\nport = 9464\n", (), "unknown [metrics] key 'port'"),
    ('metrics = "127.0.0.1:9464"\n', (), "config: [metrics] must be a table"),
    (None, ("--metrics-listen", "9464"), "--metrics-listen: '9464' is not HOST:PORT"),
    (None, ("--metrics-listen", "no-such-host.invalid:9464"), "metrics: cannot listen on no-such-host.invalid"),
])
def test_bad_metrics_settings_are_one_clear_line(tmp_path, config, args, expected):
    result = run_cli(tmp_path, *args, config=config)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_port_in_use_stops_the_start_clearly(tmp_path, taken_port):
    result = run_cli(tmp_path, "--metrics-listen", f"127.0.0.1:{taken_port}")
    assert result.returncode == 1
    assert f"metrics: cannot listen on 127.0.0.1:{taken_port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["supervisor.lock"]  # nothing left


def test_the_flag_wins_over_the_config(tmp_path, taken_port):
    config = tmp_path / "config.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{taken_port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cosihost", "run", "--runtime-dir", str(tmp_path / "run"),
                             "--state-dir", str(tmp_path / "state"), "--controllers", str(tmp_path / "none"),
                             "--config", str(config), "--metrics-listen", "127.0.0.1:0"])
    try:
        path = tmp_path / "run" / "metrics.addr"

        def address() -> str:
            assert proc.poll() is None, f"the supervisor exited with {proc.returncode}"
            return path.is_file() and path.read_text().strip()
        served = wait_for(address, timeout=20, message="metrics.addr")
        assert served != f"127.0.0.1:{taken_port}" and served.startswith("127.0.0.1:")
        assert scrape_until(served, lambda m: m.value("cosihost_supervisor_ready") == 1, "ready")
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert not path.exists()


def test_each_etcd_namespace_says_whether_it_is_reached(etcd_fleet, supervisor_factory):
    pytest.importorskip("grpc", reason="etcd namespaces need gRPC: pip install 'cosihost[etcd]'")
    prefix = f"/metrics-{uuid.uuid4().hex[:8]}"
    lost = '[namespaces.lost]\nbackend = "etcd"\nendpoints = ["127.0.0.1:1"]\ntimeout = 1\n'
    sup = supervisor_factory(config=CONFIG + etcd_fleet.namespace_config(prefix, namespace="fleet") + lost)
    m = scrape_until(metrics_address(sup), lambda m: m.value("cosihost_supervisor_ready") == 1, "ready")
    assert m.value("cosihost_etcd_namespace_reached", namespace="fleet") == 1
    assert m.value("cosihost_etcd_namespace_reached", namespace="lost") == 0
    assert m.families["cosihost_etcd_namespace_reached"].type == "gauge"


#: Publishes its own token, so the test can send heartbeats as this controller.
TOKENER = '''
from cosihost import Controller, Output

class Tokener(Controller):
    name = "test.Tokener"
    outputs = [Output("Tokens.test.cosihost.dev")]

    def reconcile(self, rt):
        token = rt._req.token
        rt.modify("tokens", "Tokens.test.cosihost.dev", "me", lambda s: s.update(token=token))
'''

JUNK_DURATIONS = [
    "not a map",
    {"reconcile_seconds": "not a map"},
    {"reconcile_seconds": {"le": [1.0, 0.5], "counts": [1, 1, 1], "sum": 1.0}},
    {"reconcile_seconds": {"le": [0.5, 1.0], "counts": [1, 1], "sum": 1.0}},
    {"reconcile_seconds": {"le": [0.5, 1.0], "counts": [1, -1, 1], "sum": 1.0}},
    {"reconcile_seconds": {"le": [0.5, 1.0], "counts": [1, 1, 1], "sum": float("nan")}},
    {"reconcile_seconds": {"le": [float(i) for i in range(1000)], "counts": [0] * 1001, "sum": 0.0}},
]


def test_junk_durations_in_a_heartbeat_are_left_out_of_the_scrape(supervisor_factory):
    import zmq

    from cosihost import wire
    # Slow heartbeats: the controller's own do not overwrite the test's in between.
    sup = supervisor_factory(config=CONFIG.replace("heartbeat = 0.1", "heartbeat = 30"),
                             controllers={"tokener": TOKENER})
    address = metrics_address(sup)
    with sup.client() as c:
        token = wait_for(lambda: c.get("tokens", "Tokens.test.cosihost.dev", "me").spec["token"],
                         message="the tokener's token")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"ipc://{sup.runtime_dir / wire.API_SOCKET}")
    name = "cosihost_controller_reconcile_duration_seconds_count"
    try:
        for n, durations in enumerate(JUNK_DURATIONS + [{"reconcile_seconds": {
                "le": [0.5, 1.0], "counts": [2, 1, 0], "sum": 1.25}}]):
            sock.send(wire.encode_request(wire.Request("heartbeat", {"durations": durations, "counters": {
                "reconciles": 3}}, f"junk-{n}", token)))
            assert wire.decode_reply(sock.recv()).ok
            m = Scrape(address)
            assert m.of("cosihost_controller_reconciles_total", "test.Tokener") == 3
            if n < len(JUNK_DURATIONS):
                assert m.value(name, controller="test.Tokener") is None, durations
        assert m.value(name, controller="test.Tokener") == 3
        assert m.value("cosihost_controller_reconcile_duration_seconds_bucket", controller="test.Tokener",
                       le="1.0") == 3
    finally:
        ctx.destroy(linger=0)
    assert sup.ping()["ready"]
