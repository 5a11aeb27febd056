"""The COSI runtime's controller conformance cases, with every controller in
its own process under a real supervisor, driven by a user client."""

from __future__ import annotations

import pytest

from cosihost import NotFoundError, Resource
from cosihost.testing import wait_for

INT = "Ints.test.cosihost.dev"
STR = "Strs.test.cosihost.dev"
SENTENCE = "Sentences.test.cosihost.dev"

INT_TO_STR = '''
from cosihost import Controller, Input, Output, NotFoundError, Resource

class IntToStr(Controller):
    name = "IntToStrController"
    inputs = [Input("{src}", "Ints.test.cosihost.dev", kind="strong"),
              Input("{dst}", "Strs.test.cosihost.dev", kind="destroy-ready")]
    outputs = [Output("Strs.test.cosihost.dev")]

    def reconcile(self, rt):
        for res in rt.list("{src}", "Ints.test.cosihost.dev"):
            rid = res.metadata.id
            if res.metadata.phase == "running":
                rt.add_finalizer("{src}", "Ints.test.cosihost.dev", rid, "IntToStrController")
                value = str(res.spec["value"])
                rt.modify("{dst}", "Strs.test.cosihost.dev", rid, lambda s: s.update(value=value))
                continue
            try:
                if not rt.teardown("{dst}", "Strs.test.cosihost.dev", rid):
                    continue
                rt.destroy("{dst}", "Strs.test.cosihost.dev", rid)
            except NotFoundError:
                pass
            rt.remove_finalizer("{src}", "Ints.test.cosihost.dev", rid, "IntToStrController")
'''

STR_TO_SENTENCE = '''
from cosihost import Controller, Input, Output, NotFoundError

class StrToSentence(Controller):
    name = "StrToSentenceController"
    inputs = [Input("{src}", "Strs.test.cosihost.dev", kind="strong"),
              Input("{dst}", "Sentences.test.cosihost.dev", kind="destroy-ready")]
    outputs = [Output("Sentences.test.cosihost.dev")]

    def reconcile(self, rt):
        for res in rt.list("{src}", "Strs.test.cosihost.dev"):
            rid = res.metadata.id
            if res.metadata.phase == "running":
                rt.add_finalizer("{src}", "Strs.test.cosihost.dev", rid, "StrToSentenceController")
                text = res.spec["value"] + " sentence"
                rt.modify("{dst}", "Sentences.test.cosihost.dev", rid, lambda s: s.update(value=text))
                continue
            try:
                if not rt.teardown("{dst}", "Sentences.test.cosihost.dev", rid):
                    continue
                rt.destroy("{dst}", "Sentences.test.cosihost.dev", rid)
            except NotFoundError:
                pass
            rt.remove_finalizer("{src}", "Strs.test.cosihost.dev", rid, "StrToSentenceController")
'''

SUM = '''
from cosihost import Controller, Input, Output

class Sum{tag}(Controller):
    name = "{name}"
    inputs = [Input("{src}", "Ints.test.cosihost.dev")]
    outputs = [Output("Ints.test.cosihost.dev", kind="shared")]

    def reconcile(self, rt):
        total = sum(r.spec["value"] for r in rt.list("{src}", "Ints.test.cosihost.dev", labels={labels!r}))
        rt.modify("{dst}", "Ints.test.cosihost.dev", "{target}", lambda s: s.update(value=total))
'''


def _values(client, namespace, type):
    return {r.metadata.id: r.spec["value"] for r in client.list(namespace, type)}


def _wait_values(client, namespace, type, expected, timeout=15.0):
    wait_for(lambda: _values(client, namespace, type) == expected, timeout=timeout,
             message=f"{namespace}/{type} == {expected} (now {_values(client, namespace, type)})")


def _teardown_and_wait(client, namespace, type, rid):
    assert client.teardown(namespace, type, rid) is False  # a controller holds it
    wait_for(lambda: not client.get(namespace, type, rid).metadata.finalizers, timeout=15,
             message=f"finalizers of {rid} to clear")
    client.destroy(namespace, type, rid)


def _int(namespace, rid, value, labels=None):
    return Resource(namespace, INT, rid, {"value": value}, labels=labels)


def test_int_to_str_with_strong_input_and_finalizers(supervisor_factory):
    sup = supervisor_factory(start=False, controllers={"inttostr": INT_TO_STR.format(src="default", dst="default")})
    sup.start()
    with sup.client() as c:
        c.create(_int("default", "one", 1))
        c.create(_int("default", "two", 2))
        _wait_values(c, "default", STR, {"one": "1", "two": "2"})
        c.create(_int("default", "three", 3))
        _wait_values(c, "default", STR, {"one": "1", "two": "2", "three": "3"})
        assert c.get("default", INT, "three").metadata.finalizers == ["IntToStrController"]
        c.modify("default", INT, "three", lambda s: s.update(value=33))
        _wait_values(c, "default", STR, {"one": "1", "two": "2", "three": "33"})
        _teardown_and_wait(c, "default", INT, "three")
        _wait_values(c, "default", STR, {"one": "1", "two": "2"})
        with pytest.raises(NotFoundError):
            c.get("default", INT, "three")


def test_int_to_str_to_sentence_chain(supervisor_factory):
    sup = supervisor_factory(start=False, controllers={
        "inttostr": INT_TO_STR.format(src="ints", dst="strings"),
        "strtosentence": STR_TO_SENTENCE.format(src="strings", dst="sentences"),
    })
    sup.start()
    with sup.client() as c:
        c.create(_int("ints", "one", 1))
        c.create(_int("ints", "two", 2))
        _wait_values(c, "sentences", SENTENCE, {"one": "1 sentence", "two": "2 sentence"})
        c.create(_int("ints", "three", 3))
        _wait_values(c, "sentences", SENTENCE, {"one": "1 sentence", "two": "2 sentence", "three": "3 sentence"})
        eleven = c.modify("ints", INT, "one", lambda s: s.update(value=11))
        assert eleven.spec["value"] == 11
        _wait_values(c, "sentences", SENTENCE, {"one": "11 sentence", "two": "2 sentence", "three": "3 sentence"})
        _teardown_and_wait(c, "ints", INT, "one")
        _wait_values(c, "sentences", SENTENCE, {"two": "2 sentence", "three": "3 sentence"})
        _wait_values(c, "strings", STR, {"two": "2", "three": "3"})


def test_sum_with_shared_outputs(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumController", src="source", dst="target", target="sum", labels=None),
    })
    with sup.client() as c:
        _wait_values(c, "target", INT, {"sum": 0})
        c.create(_int("source", "one", 1))
        c.create(_int("source", "two", 2))
        _wait_values(c, "target", INT, {"sum": 3})
        c.destroy("source", INT, "one")
        _wait_values(c, "target", INT, {"sum": 2})
        assert c.get("target", INT, "sum").metadata.owner == "SumController"


def test_sum_filtered_by_labels(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumFiltered", src="source", dst="target", target="sum",
                          labels="summable"),
    })
    with sup.client() as c:
        _wait_values(c, "target", INT, {"sum": 0})
        c.create(_int("source", "one", 1, {"summable": "true"}))
        c.create(_int("source", "two", 2, {"summable": "true"}))
        c.create(_int("source", "skipped", 100))
        _wait_values(c, "target", INT, {"sum": 3})
        c.create(_int("source", "three", 3, {"summable": "true"}))
        _wait_values(c, "target", INT, {"sum": 6})
        c.destroy("source", INT, "two")
        _wait_values(c, "target", INT, {"sum": 4})


def test_cascading_sums_share_one_output_type(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum1": SUM.format(tag="1", name="Sum1", src="source1", dst="target", target="sum1", labels=None),
        "sum2": SUM.format(tag="2", name="Sum2", src="source2", dst="target", target="sum2", labels=None),
        "sumall": SUM.format(tag="All", name="SumAll", src="target", dst="total", target="sum", labels=None),
    })
    with sup.client() as c:
        c.create(_int("source1", "one", 1))
        c.create(_int("source1", "two", 2))
        c.create(_int("source2", "three", 3))
        c.create(_int("source2", "four", 4))
        _wait_values(c, "target", INT, {"sum1": 3, "sum2": 7})
        _wait_values(c, "total", INT, {"sum": 10})
        owners = {r.metadata.id: r.metadata.owner for r in c.list("target", INT)}
        assert owners == {"sum1": "Sum1", "sum2": "Sum2"}


def test_controller_added_while_running(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumController", src="source", dst="target", target="sum", labels=None),
    })
    with sup.client() as c:
        c.create(_int("source", "one", 5))
        _wait_values(c, "target", INT, {"sum": 5})
        sup.write_controller("inttostr", INT_TO_STR.format(src="source", dst="strings"))
        summary = c.call("reload")
        assert summary["started"] == ["IntToStrController"]
        _wait_values(c, "strings", STR, {"one": "5"})
        _wait_values(c, "target", INT, {"sum": 5})


FAILING = '''
from cosihost import Controller, Input, Output

class Failing(Controller):
    name = "FailingController"
    inputs = []
    outputs = [Output("Ints.test.cosihost.dev")]
    count = 0

    def reconcile(self, rt):
        self.count += 1
        rt.modify("target", "Ints.test.cosihost.dev", "count", lambda s: s.update(value=self.count))
        {failure}
'''


@pytest.mark.parametrize("failure", ["raise RuntimeError('failed')", "import os; os._exit(3)"],
                         ids=["raises", "exits"])
def test_failing_controller_is_retried_with_backoff(supervisor_factory, failure):
    sup = supervisor_factory(config="[timing]\nbackoff_cap = 0.5\nheartbeat = 0.1\nusage_every = 0.2\n",
                             controllers={"failing": FAILING.format(failure=failure)})
    with sup.client() as c:
        wait_for(lambda: c.get("target", INT, "count").spec["value"] >= 1, message="a first run")
        if "raise" in failure:
            # Retried in the same process: the count keeps growing past 1.
            wait_for(lambda: c.get("target", INT, "count").spec["value"] >= 3, message="retries")
            status = sup.statuses()["FailingController"]
            assert status["restarts"] == 0
            wait_for(lambda: sup.statuses()["FailingController"]["counters"].get("crashes", 0) >= 1,
                     message="crash counter")
        else:
            # The process dies each time; the supervisor restarts it.
            spec = sup.wait_status("FailingController", lambda s: s["restarts"] >= 2)
            assert spec["last_exit"]["code"] == 3
            assert spec["last_exit"]["reason"] == "exited with code 3"


INT_DOUBLER = '''
from cosihost import Controller, Input, Output

class IntDoubler(Controller):
    name = "IntDoublerController"
    inputs = [Input("source", "Ints.test.cosihost.dev")]
    outputs = [Output("Ints.test.cosihost.dev", kind="shared")]  # users write the inputs

    def reconcile(self, rt):
        rt.start_tracking_outputs()
        for res in rt.list("source", "Ints.test.cosihost.dev"):
            value = res.spec["value"] * 2
            rt.modify("target", "Ints.test.cosihost.dev", res.metadata.id, lambda s: s.update(value=value))
        rt.cleanup_outputs()
'''


def test_int_doubler_cleans_up_untouched_outputs(supervisor_factory):
    sup = supervisor_factory(controllers={"doubler": INT_DOUBLER})
    with sup.client() as c:
        c.create(_int("source", "one", 1))
        c.create(_int("source", "two", 2))
        _wait_values(c, "target", INT, {"one": 2, "two": 4})
        c.create(_int("source", "three", 3))
        _wait_values(c, "target", INT, {"one": 2, "two": 4, "three": 6})
        c.destroy("source", INT, "three")
        _wait_values(c, "target", INT, {"one": 2, "two": 4})


MODIFY_WITH_RESULT = '''
from cosihost import Controller, Input, Output

class ModifyWithResult(Controller):
    name = "ModifyWithResultController"
    inputs = [Input("modify", "Strs.test.cosihost.dev")]
    outputs = [Output("Sentences.test.cosihost.dev")]

    def reconcile(self, rt):
        for res in rt.list("modify", "Strs.test.cosihost.dev"):
            value = res.spec["value"]
            out = rt.modify("modify", "Sentences.test.cosihost.dev", res.metadata.id + "-out",
                            lambda s: s.update(value=value + "-modified"))
            rt.modify("modify", "Sentences.test.cosihost.dev", res.metadata.id + "-result",
                      lambda s: s.update(value="version " + str(out.metadata.version) + ": " + out.spec["value"]))
'''


def test_modify_returns_the_written_resource(supervisor_factory):
    sup = supervisor_factory(controllers={"mwr": MODIFY_WITH_RESULT})
    with sup.client() as c:
        c.create(Resource("modify", STR, "id", {"value": "val-1"}))
        _wait_values(c, "modify", SENTENCE, {"id-out": "val-1-modified", "id-result": "version 1: val-1-modified"})
        c.modify("modify", STR, "id", lambda s: s.update(value="val-2"))
        _wait_values(c, "modify", SENTENCE, {"id-out": "val-2-modified", "id-result": "version 2: val-2-modified"})


METRICS = '''
from cosihost import Controller, Input, Output

class Metrics(Controller):
    name = "MetricsController"
    inputs = [Input("metrics", "Ints.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]

    def reconcile(self, rt):
        items = rt.list("metrics", "Ints.test.cosihost.dev")
        for res in items:
            rt.modify("metrics", "Strs.test.cosihost.dev", res.metadata.id,
                      lambda s: s.update(value=str(res.spec["value"])))
        if any(r.spec["value"] < 0 for r in items):
            raise ValueError("negative")
'''


def test_runtime_counters_of_wakeups_reads_writes_and_crashes(supervisor_factory):
    sup = supervisor_factory(config="[timing]\nheartbeat = 0.1\nbackoff_cap = 0.2\nusage_every = 0.2\n",
                             controllers={"metrics": METRICS})
    with sup.client() as c:
        c.create(_int("metrics", "one", 1))
        _wait_values(c, "metrics", STR, {"one": "1"})

        def counters():
            return sup.statuses()["MetricsController"]["counters"]
        wait_for(lambda: counters().get("writes", 0) >= 1 and counters().get("wakeups", 0) >= 1,
                 message="counters to report a wakeup and a write")
        before = counters()
        assert before["reads"] >= 2 and before["crashes"] == 0
        c.create(_int("metrics", "bad", -1))
        wait_for(lambda: counters().get("crashes", 0) >= 1, message="a crash to be counted")
        after = counters()
        assert after["wakeups"] > before["wakeups"]
        assert after["writes"] > before["writes"]
        assert after["reads"] > before["reads"]
