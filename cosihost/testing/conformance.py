"""Controllers of the COSI runtime's controller conformance cases, as module
sources to drop into a controllers folder, and helpers to drive them.

COSI keeps its conformance controllers in a package that every runtime's
tests import; these are ours. Templates take ``{src}`` and ``{dst}``
namespaces (``str.format``), so one chain can run on one host or span
hosts that share an etcd namespace.
"""

from __future__ import annotations

from typing import Any

from ..client import Client
from ..resource import Resource
from .process import wait_for

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


Q_INT_TO_STR = '''
from cosihost import QController, Input, Output, NotFoundError, Pointer

class QIntToStr(QController):
    name = "QIntToStrController"
    primary = [Input("{src}", "Ints.test.cosihost.dev", kind="strong")]
    mapped = [Input("{dst}", "Strs.test.cosihost.dev", kind="destroy-ready")]
    outputs = [Output("Strs.test.cosihost.dev")]
    concurrency = 4

    def reconcile(self, rt, ptr):
        try:
            src = rt.get(*ptr)
        except NotFoundError:
            return
        if src.metadata.phase == "tearing-down":
            try:
                if not rt.teardown("{dst}", "Strs.test.cosihost.dev", ptr.id):
                    return  # held downstream: its destroy-ready event maps back here
                rt.destroy("{dst}", "Strs.test.cosihost.dev", ptr.id)
            except NotFoundError:
                pass
            rt.remove_finalizer(*ptr, self.name)
            return
        rt.add_finalizer(*ptr, self.name)
        value = str(src.spec["value"])
        rt.modify("{dst}", "Strs.test.cosihost.dev", ptr.id, lambda s: s.update(value=value))

    def map_input(self, rt, md):
        return [Pointer("{src}", "Ints.test.cosihost.dev", md.id)]

    def shutdown(self, rt):
        count = 0
        try:
            count = rt.get("{dst}", "Strs.test.cosihost.dev", "shutdowns").spec["count"]
        except NotFoundError:
            pass
        rt.modify("{dst}", "Strs.test.cosihost.dev", "shutdowns", lambda s: s.update(value=str(count + 1), count=count + 1))
'''

Q_FAILING = '''
from cosihost import QController, Input, Output, NotFoundError, Requeue

class QFailing(QController):
    name = "QFailingController"
    primary = [Input("{src}", "Sentences.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]
    concurrency = 4

    def reconcile(self, rt, ptr):
        try:
            value = rt.get(*ptr).spec["value"]
        except NotFoundError:
            return
        if value == "fail":
            raise RuntimeError("failing as requested")
        if value == "requeue_no_error":
            raise Requeue(0.1)
        if value == "requeue_with_error":
            raise Requeue(0.1, RuntimeError("requeue with error"))
        rt.modify("{dst}", "Strs.test.cosihost.dev", ptr.id, lambda s: s.update(value=value))

    def map_input(self, rt, md):
        raise AssertionError("nothing is mapped")
'''


def values(client: Client, namespace: str, type: str) -> dict[str, Any]:
    """Each resource's ``spec["value"]``, by id."""
    return {r.metadata.id: r.spec["value"] for r in client.list(namespace, type)}


def wait_values(client: Client, namespace: str, type: str, expected: dict[str, Any],
                timeout: float = 15.0) -> None:
    wait_for(lambda: values(client, namespace, type) == expected, timeout=timeout,
             message=f"{namespace}/{type} == {expected} (now {values(client, namespace, type)})")


def teardown_and_wait(client: Client, namespace: str, type: str, rid: str) -> None:
    """Tear down a resource a controller holds, wait for its finalizers, destroy it."""
    assert client.teardown(namespace, type, rid) is False  # a controller holds it
    wait_for(lambda: not client.get(namespace, type, rid).metadata.finalizers, timeout=15,
             message=f"finalizers of {rid} to clear")
    client.destroy(namespace, type, rid)


def int_resource(namespace: str, rid: str, value: int, labels: dict[str, str] | None = None) -> Resource:
    return Resource(namespace, INT, rid, {"value": value}, labels=labels)
