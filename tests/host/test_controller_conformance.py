"""The COSI runtime's controller conformance cases, with every controller in
its own process under a real supervisor, driven by a user client."""

from __future__ import annotations

import pytest

from cosihost import NotFoundError, Resource
from cosihost.testing import wait_for
from cosihost.testing.conformance import (INT, INT_TO_STR, SENTENCE, STR, STR_TO_SENTENCE, SUM, int_resource,
                                          teardown_and_wait, wait_values)

def test_int_to_str_with_strong_input_and_finalizers(supervisor_factory):
    sup = supervisor_factory(start=False, controllers={"inttostr": INT_TO_STR.format(src="default", dst="default")})
    sup.start()
    with sup.client() as c:
        c.create(int_resource("default", "one", 1))
        c.create(int_resource("default", "two", 2))
        wait_values(c, "default", STR, {"one": "1", "two": "2"})
        c.create(int_resource("default", "three", 3))
        wait_values(c, "default", STR, {"one": "1", "two": "2", "three": "3"})
        assert c.get("default", INT, "three").metadata.finalizers == ["IntToStrController"]
        c.modify("default", INT, "three", lambda s: s.update(value=33))
        wait_values(c, "default", STR, {"one": "1", "two": "2", "three": "33"})
        teardown_and_wait(c, "default", INT, "three")
        wait_values(c, "default", STR, {"one": "1", "two": "2"})
        with pytest.raises(NotFoundError):
            c.get("default", INT, "three")


def test_int_to_str_to_sentence_chain(supervisor_factory):
    sup = supervisor_factory(start=False, controllers={
        "inttostr": INT_TO_STR.format(src="ints", dst="strings"),
        "strtosentence": STR_TO_SENTENCE.format(src="strings", dst="sentences"),
    })
    sup.start()
    with sup.client() as c:
        c.create(int_resource("ints", "one", 1))
        c.create(int_resource("ints", "two", 2))
        wait_values(c, "sentences", SENTENCE, {"one": "1 sentence", "two": "2 sentence"})
        c.create(int_resource("ints", "three", 3))
        wait_values(c, "sentences", SENTENCE, {"one": "1 sentence", "two": "2 sentence", "three": "3 sentence"})
        eleven = c.modify("ints", INT, "one", lambda s: s.update(value=11))
        assert eleven.spec["value"] == 11
        wait_values(c, "sentences", SENTENCE, {"one": "11 sentence", "two": "2 sentence", "three": "3 sentence"})
        teardown_and_wait(c, "ints", INT, "one")
        wait_values(c, "sentences", SENTENCE, {"two": "2 sentence", "three": "3 sentence"})
        wait_values(c, "strings", STR, {"two": "2", "three": "3"})


def test_sum_with_shared_outputs(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumController", src="source", dst="target", target="sum", labels=None),
    })
    with sup.client() as c:
        wait_values(c, "target", INT, {"sum": 0})
        c.create(int_resource("source", "one", 1))
        c.create(int_resource("source", "two", 2))
        wait_values(c, "target", INT, {"sum": 3})
        c.destroy("source", INT, "one")
        wait_values(c, "target", INT, {"sum": 2})
        assert c.get("target", INT, "sum").metadata.owner == "SumController"


def test_sum_filtered_by_labels(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumFiltered", src="source", dst="target", target="sum",
                          labels="summable"),
    })
    with sup.client() as c:
        wait_values(c, "target", INT, {"sum": 0})
        c.create(int_resource("source", "one", 1, {"summable": "true"}))
        c.create(int_resource("source", "two", 2, {"summable": "true"}))
        c.create(int_resource("source", "skipped", 100))
        wait_values(c, "target", INT, {"sum": 3})
        c.create(int_resource("source", "three", 3, {"summable": "true"}))
        wait_values(c, "target", INT, {"sum": 6})
        c.destroy("source", INT, "two")
        wait_values(c, "target", INT, {"sum": 4})


def test_cascading_sums_share_one_output_type(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum1": SUM.format(tag="1", name="Sum1", src="source1", dst="target", target="sum1", labels=None),
        "sum2": SUM.format(tag="2", name="Sum2", src="source2", dst="target", target="sum2", labels=None),
        "sumall": SUM.format(tag="All", name="SumAll", src="target", dst="total", target="sum", labels=None),
    })
    with sup.client() as c:
        c.create(int_resource("source1", "one", 1))
        c.create(int_resource("source1", "two", 2))
        c.create(int_resource("source2", "three", 3))
        c.create(int_resource("source2", "four", 4))
        wait_values(c, "target", INT, {"sum1": 3, "sum2": 7})
        wait_values(c, "total", INT, {"sum": 10})
        owners = {r.metadata.id: r.metadata.owner for r in c.list("target", INT)}
        assert owners == {"sum1": "Sum1", "sum2": "Sum2"}


def test_controller_added_while_running(supervisor_factory):
    sup = supervisor_factory(controllers={
        "sum": SUM.format(tag="", name="SumController", src="source", dst="target", target="sum", labels=None),
    })
    with sup.client() as c:
        c.create(int_resource("source", "one", 5))
        wait_values(c, "target", INT, {"sum": 5})
        sup.write_controller("inttostr", INT_TO_STR.format(src="source", dst="strings"))
        summary = c.call("reload")
        assert summary["started"] == ["IntToStrController"]
        wait_values(c, "strings", STR, {"one": "5"})
        wait_values(c, "target", INT, {"sum": 5})


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
        c.create(int_resource("source", "one", 1))
        c.create(int_resource("source", "two", 2))
        wait_values(c, "target", INT, {"one": 2, "two": 4})
        c.create(int_resource("source", "three", 3))
        wait_values(c, "target", INT, {"one": 2, "two": 4, "three": 6})
        c.destroy("source", INT, "three")
        wait_values(c, "target", INT, {"one": 2, "two": 4})


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
        wait_values(c, "modify", SENTENCE, {"id-out": "val-1-modified", "id-result": "version 1: val-1-modified"})
        c.modify("modify", STR, "id", lambda s: s.update(value="val-2"))
        wait_values(c, "modify", SENTENCE, {"id-out": "val-2-modified", "id-result": "version 2: val-2-modified"})


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
        c.create(int_resource("metrics", "one", 1))
        wait_values(c, "metrics", STR, {"one": "1"})

        def counters():
            return sup.statuses()["MetricsController"]["counters"]
        wait_for(lambda: counters().get("writes", 0) >= 1 and counters().get("wakeups", 0) >= 1,
                 message="counters to report a wakeup and a write")
        before = counters()
        assert before["reads"] >= 2 and before["crashes"] == 0
        c.create(int_resource("metrics", "bad", -1))
        wait_for(lambda: counters().get("crashes", 0) >= 1, message="a crash to be counted")
        after = counters()
        assert after["wakeups"] > before["wakeups"]
        assert after["writes"] > before["writes"]
        assert after["reads"] > before["reads"]
