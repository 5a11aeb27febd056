"""``[access] group``: members of the group use the local sockets as users;
everyone else is stopped by the file system, and the admin token stays the
supervisor's. Run as root: the clients are forked children that become
another uid (no other interpreter needs to be reachable)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

from cosihost import Client, Resource
from cosihost.testing import wait_for

MEMBER_GID, OTHER_GID, UID = 42_430, 42_440, 42_420
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def _as_user(uid: int, groups: list[int], fn: Callable[[], Any]) -> Any:
    """``fn()`` in a forked child that has become ``uid`` with ``groups``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, run, report, never return
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(groups[0])
            os.setuid(uid)
            out = {"result": fn()}
        except BaseException as exc:  # reported to the parent, which asserts on it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _use(rd: Path) -> Any:
    sock = rd / "api.sock"
    if not os.access(sock, os.R_OK | os.W_OK):
        return "no access"
    with Client(rd, timeout=3, retries=0) as c:
        made = c.create(Resource("shared", "Notes.test.cosihost.dev", f"by-{os.getuid()}", {}))
        return [c.call("ping")["ready"], made.metadata.owner]


def test_group_members_use_the_sockets_and_others_cannot(supervisor_factory) -> None:
    sup = supervisor_factory(config=f"[access]\ngroup = {MEMBER_GID}\n", controllers={})
    os.chmod(sup.base, 0o711)   # the test's own folder: let the other user through to run/
    rd = sup.runtime_dir
    for name, mode in (("api.sock", 0o660), ("events.sock", 0o660)):
        st = (rd / name).stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (MEMBER_GID, mode), name
    token = (rd / "admin.token").stat()
    assert (token.st_uid, stat.S_IMODE(token.st_mode)) == (0, 0o600)
    assert _as_user(UID, [MEMBER_GID], lambda: _use(rd)) == {"result": [True, ""]}
    assert _as_user(UID, [OTHER_GID], lambda: _use(rd)) == {"result": "no access"}
    member_reads_token = _as_user(UID, [MEMBER_GID], lambda: (rd / "admin.token").read_text())
    assert "PermissionError" in member_reads_token.get("error", ""), member_reads_token


def test_an_unknown_group_name_is_refused_clearly(tmp_path: Path) -> None:
    from cosihost import InvalidRequestError
    from cosihost.settings import Settings
    config = tmp_path / "config.toml"
    config.write_text('[access]\ngroup = "no-such-group-here"\n')
    with pytest.raises(InvalidRequestError, match="no such group"):
        Settings.build(runtime_dir=tmp_path, config=config)


WRITERS_GID = 42_450


def _write_or_read(rd: Path) -> Any:
    with Client(rd, timeout=3, retries=0) as c:
        listed = c.list("shared", "Notes.test.cosihost.dev")
        try:
            c.create(Resource("shared", "Notes.test.cosihost.dev", f"w-{os.getuid()}-{len(os.getgroups())}", {}))
            return ["wrote", len(listed) >= 0]
        except Exception as exc:  # the refusal is what the test reads
            return [type(exc).__name__, str(exc)]


def test_only_writers_write_the_others_read(supervisor_factory) -> None:
    from test_supervision import RELAY
    sup = supervisor_factory(config=f"[access]\ngroup = {MEMBER_GID}\nwriters = {WRITERS_GID}\n",
                             controllers={"relay": RELAY})
    os.chmod(sup.base, 0o711)
    rd = sup.runtime_dir
    reader = _as_user(UID, [MEMBER_GID], lambda: _write_or_read(rd))["result"]
    assert reader[0] == "AccessDeniedError" and "may read but not create" in reader[1], reader
    writer = _as_user(UID, [MEMBER_GID, WRITERS_GID], lambda: _write_or_read(rd))["result"]
    assert writer == ["wrote", True]
    with sup.client() as c:   # the supervisor's own user writes, as before
        c.create(Resource("shared", "Notes.test.cosihost.dev", "root", {}))
        assert sorted(r.metadata.id for r in c.list("shared", "Notes.test.cosihost.dev")) == ["root", f"w-{UID}-2"]
        c.create(Resource("relay-in", "Ints.test.cosihost.dev", "x", {"value": 1}))   # controllers: by token
        wait_for(lambda: c.list("relay-out", "Strs.test.cosihost.dev"), message="the controller's write")
