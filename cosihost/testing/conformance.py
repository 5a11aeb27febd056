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
