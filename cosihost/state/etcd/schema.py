"""The slice of etcd's v3 gRPC API this backend speaks, declared in Python.

Why not generated stubs or a client library: the Python etcd clients are
either unmaintained and pinned to protobuf 3 (``etcd3``) or asyncio-only
without TLS or multiple endpoints (``aetcd``), and checked-in ``protoc``
output is tied to the protobuf runtime that generated it. We use a handful of RPCs
(Range, Put, Txn, Compact, Watch, Status and nothing else), so their messages
are declared here as a descriptor, field numbers as published in etcd's
``rpc.proto`` and ``kv.proto``, and built by whatever protobuf runtime is
installed. Unknown fields that a newer etcd adds are kept and ignored.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"bytes": _F.TYPE_BYTES, "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64,
          "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING}

# message -> [(field, number, type, repeated, oneof)]; a type not in _TYPES
# is a message or enum of this file ("enum:" marks enums).
_MESSAGES: dict[str, list[tuple[str, int, str, bool, str | None]]] = {
    "ResponseHeader": [("cluster_id", 1, "uint64", False, None), ("member_id", 2, "uint64", False, None),
                       ("revision", 3, "int64", False, None), ("raft_term", 4, "uint64", False, None)],
    "KeyValue": [("key", 1, "bytes", False, None), ("create_revision", 2, "int64", False, None),
                 ("mod_revision", 3, "int64", False, None), ("version", 4, "int64", False, None),
                 ("value", 5, "bytes", False, None), ("lease", 6, "int64", False, None)],
    "Event": [("type", 1, "enum:EventType", False, None), ("kv", 2, "KeyValue", False, None),
              ("prev_kv", 3, "KeyValue", False, None)],
    "RangeRequest": [("key", 1, "bytes", False, None), ("range_end", 2, "bytes", False, None),
                     ("limit", 3, "int64", False, None), ("revision", 4, "int64", False, None),
                     ("serializable", 7, "bool", False, None), ("keys_only", 8, "bool", False, None),
                     ("count_only", 9, "bool", False, None)],
    "RangeResponse": [("header", 1, "ResponseHeader", False, None), ("kvs", 2, "KeyValue", True, None),
                      ("more", 3, "bool", False, None), ("count", 4, "int64", False, None)],
    "PutRequest": [("key", 1, "bytes", False, None), ("value", 2, "bytes", False, None),
                   ("lease", 3, "int64", False, None), ("prev_kv", 4, "bool", False, None)],
    "PutResponse": [("header", 1, "ResponseHeader", False, None), ("prev_kv", 2, "KeyValue", False, None)],
    "DeleteRangeRequest": [("key", 1, "bytes", False, None), ("range_end", 2, "bytes", False, None),
                           ("prev_kv", 3, "bool", False, None)],
    "DeleteRangeResponse": [("header", 1, "ResponseHeader", False, None), ("deleted", 2, "int64", False, None),
                            ("prev_kvs", 3, "KeyValue", True, None)],
    "RequestOp": [("request_range", 1, "RangeRequest", False, "request"),
                  ("request_put", 2, "PutRequest", False, "request"),
                  ("request_delete_range", 3, "DeleteRangeRequest", False, "request")],
    "ResponseOp": [("response_range", 1, "RangeResponse", False, "response"),
                   ("response_put", 2, "PutResponse", False, "response"),
                   ("response_delete_range", 3, "DeleteRangeResponse", False, "response")],
    "Compare": [("result", 1, "enum:CompareResult", False, None), ("target", 2, "enum:CompareTarget", False, None),
                ("key", 3, "bytes", False, None), ("version", 4, "int64", False, "target_union"),
                ("create_revision", 5, "int64", False, "target_union"),
                ("mod_revision", 6, "int64", False, "target_union"), ("value", 7, "bytes", False, "target_union")],
    "TxnRequest": [("compare", 1, "Compare", True, None), ("success", 2, "RequestOp", True, None),
                   ("failure", 3, "RequestOp", True, None)],
    "TxnResponse": [("header", 1, "ResponseHeader", False, None), ("succeeded", 2, "bool", False, None),
                    ("responses", 3, "ResponseOp", True, None)],
    "CompactionRequest": [("revision", 1, "int64", False, None), ("physical", 2, "bool", False, None)],
    "CompactionResponse": [("header", 1, "ResponseHeader", False, None)],
    "WatchCreateRequest": [("key", 1, "bytes", False, None), ("range_end", 2, "bytes", False, None),
                           ("start_revision", 3, "int64", False, None), ("progress_notify", 4, "bool", False, None),
                           ("prev_kv", 6, "bool", False, None)],
    "WatchCancelRequest": [("watch_id", 1, "int64", False, None)],
    "WatchProgressRequest": [],
    "WatchRequest": [("create_request", 1, "WatchCreateRequest", False, "request_union"),
                     ("cancel_request", 2, "WatchCancelRequest", False, "request_union"),
                     ("progress_request", 3, "WatchProgressRequest", False, "request_union")],
    "WatchResponse": [("header", 1, "ResponseHeader", False, None), ("watch_id", 2, "int64", False, None),
                      ("created", 3, "bool", False, None), ("canceled", 4, "bool", False, None),
                      ("compact_revision", 5, "int64", False, None), ("cancel_reason", 6, "string", False, None),
                      ("events", 11, "Event", True, None)],
    "StatusRequest": [],
    "StatusResponse": [("header", 1, "ResponseHeader", False, None), ("version", 2, "string", False, None),
                       ("leader", 4, "uint64", False, None), ("raftTerm", 6, "uint64", False, None)],
}

_ENUMS = {
    "EventType": ["PUT", "DELETE"],
    "CompareResult": ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"],
    "CompareTarget": ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"],
}

PACKAGE = "etcdserverpb"

#: (service, method) -> (request, response, client streaming and server streaming)
METHODS = {
    ("KV", "Range"): ("RangeRequest", "RangeResponse", False),
    ("KV", "Put"): ("PutRequest", "PutResponse", False),
    ("KV", "Txn"): ("TxnRequest", "TxnResponse", False),
    ("KV", "Compact"): ("CompactionRequest", "CompactionResponse", False),
    ("Watch", "Watch"): ("WatchRequest", "WatchResponse", True),
    ("Maintenance", "Status"): ("StatusRequest", "StatusResponse", False),
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    # One file under our own name: the message full names match etcd's (the
    # wire carries field numbers only), and the pool is private, so another
    # etcd library in the same process cannot clash with it.
    fdp = descriptor_pb2.FileDescriptorProto(name="cosihost_etcd.proto", package=PACKAGE, syntax="proto3")
    for name, values in _ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=f"{name}_{value}", number=number)
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        oneofs: list[str] = []
        for fname, number, ftype, repeated, oneof in fields:
            field = msg.field.add(name=fname, number=number,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if ftype in _TYPES:
                field.type = _TYPES[ftype]
            elif ftype.startswith("enum:"):
                field.type, field.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{ftype[5:]}"
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{ftype}"
            if oneof is not None:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    msg.oneof_decl.add(name=oneof)
                field.oneof_index = oneofs.index(oneof)
    return fdp


class Messages:
    """The message classes by name: ``m.RangeRequest(key=...)``."""

    def __init__(self) -> None:
        pool = descriptor_pool.DescriptorPool()
        pool.Add(_file())
        for name in _MESSAGES:
            desc = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
            setattr(self, name, message_factory.GetMessageClass(desc))

    def __getattr__(self, name: str) -> Any:  # for type checkers: every message is an attribute
        raise AttributeError(name)


# Enum numbers, as the wire carries them.
PUT, DELETE = 0, 1
EQUAL, GREATER, LESS, NOT_EQUAL = 0, 1, 2, 3
TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE = 0, 1, 2, 3
