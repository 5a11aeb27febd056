"""Named users and per-controller capabilities (``[isolation.controllers."NAME"]``),
from real controller processes: a controller runs as the account its class
or the config names (the config wins), two run as one account only when the
config names it for both, a user that does not exist refuses that controller
alone; a table's grant gives a capability the class does not declare, and
its deny of a declared one refuses that controller alone. What each process
is, is read from outside, in /proc/PID/status. Root only: only root can
hand out uids. The accounts are existing ones (nobody, daemon, ...): the
machine's passwd is never changed."""

from __future__ import annotations

import os
import pwd

import pytest

from cosihost.testing import wait_for

from test_isolation import CAPS, PROBE, _wide_row
from test_supervision import FAST

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can run controllers as other users")

NET_ADMIN, NET_RAW = 1 << 12, 1 << 13


def _accounts(count: int) -> list[pwd.struct_passwd]:
    """``count`` accounts other than root below the dynamic uids, nobody and daemon first."""
    found = sorted((a for a in pwd.getpwall() if 0 < a.pw_uid < 3_000_000),
                   key=lambda a: (a.pw_name not in ("nobody", "daemon"), a.pw_uid))
    unique = [a for i, a in enumerate(found) if all(b.pw_uid != a.pw_uid for b in found[:i])]
    if len(unique) < count:
        pytest.skip(f"needs {count} accounts besides root in /etc/passwd (useradd --system cosihost-test)")
    return unique[:count]


def _config(tables: dict[str, str], isolation: str = "") -> str:
    text = FAST + "[isolation]\nenabled = true\n" + isolation
    return text + "".join(f'\n[isolation.controllers."test.{cls}"]\n{body}\n' for cls, body in tables.items())


def _probe(cls: str, caps: str = "[]", user: str = "") -> str:
    source = PROBE.format(cls=cls, caps=CAPS, caps_list=caps)
    return source + (f"    user = {user!r}\n" if user else "")


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}


def _reported(sup, cls: str) -> dict:
    with sup.client() as c:
        return wait_for(lambda: [r.spec for r in c.list("caps", CAPS + cls)], message=f"{cls}'s report")[0]


def test_a_named_user_runs_the_controller_as_that_account(supervisor_factory) -> None:
    """Declared by the class (Declared), named by the config over a class's own
    (Configured), named by the config for two (Configured, Shared), missing
    (Missing: refused, the others run), none (Plain: a uid of its own)."""
    declared, named = _accounts(2)
    modules = {"declared": _probe("Declared", user=declared.pw_name),
               "configured": _probe("Configured", user=declared.pw_name),
               "shared": _probe("Shared"), "missing": _probe("Missing"), "plain": _probe("Plain")}
    config = _config({"Configured": f'user = "{named.pw_name}"', "Shared": f'user = "{named.pw_name}"',
                      "Missing": 'user = "no-such-user-cosihost"'})
    sup = supervisor_factory(config=config, controllers=modules)
    for cls in ("Declared", "Configured", "Shared", "Plain"):
        _reported(sup, cls)
    statuses = sup.statuses()
    group = statuses["test.Plain"]["isolation"]["groups"]
    for cls, account in (("Declared", declared), ("Configured", named), ("Shared", named)):
        proc = _proc_status(sup.controller_pid(f"test.{cls}"))
        assert proc["Uid"].split() == [str(account.pw_uid)] * 4, (cls, proc["Uid"])
        assert proc["Gid"].split() == [str(account.pw_gid)] * 4, (cls, proc["Gid"])
        assert proc["Groups"].split() == [str(g) for g in group] and proc["NoNewPrivs"] == "1"
        iso = statuses[f"test.{cls}"]["isolation"]
        assert (iso["mode"], iso["user"], iso["uid"]) == ("user", account.pw_name, account.pw_uid)
    assert statuses["test.Declared"]["isolation"]["shared_with"] == []
    assert statuses["test.Shared"]["isolation"]["shared_with"] == ["test.Configured"]
    assert " ".join(_wide_row(sup, "test.Shared")).endswith(f"{named.pw_name} (uid {named.pw_uid}, shared)")
    assert statuses["test.Missing"]["state"] == "refused"
    assert statuses["test.Missing"]["reason"] == ("test.Missing: user 'no-such-user-cosihost' (from "
                                                  '[isolation.controllers."test.Missing"] user) does not exist')
    plain = statuses["test.Plain"]["isolation"]
    assert plain["mode"] == "dynamic-user" and plain["uid"] >= 3_000_000 and "user" not in plain


def test_a_declared_user_is_not_shared_unless_the_config_says_so(supervisor_factory) -> None:
    """The config names for Second the account First declares: the second to
    come is refused, saying whose it is; once First is gone, Second runs."""
    account, = _accounts(1)
    modules = {"a_first": _probe("First", user=account.pw_name), "b_second": _probe("Second")}
    sup = supervisor_factory(config=_config({"Second": f'user = "{account.pw_name}"'}), controllers=modules)
    _reported(sup, "First")
    reason = sup.statuses()["test.Second"]["reason"]
    assert f"user '{account.pw_name}' (uid {account.pw_uid}, from [isolation.controllers" in reason
    assert "already runs test.First (from its declaration)" in reason
    (sup.controllers_dir / "a_first.py").unlink()
    with sup.client() as c:
        c.call("reload")
    sup.wait_status("test.Second", lambda s: s["state"] == "running")
    assert _proc_status(sup.controller_pid("test.Second"))["Uid"].split()[0] == str(account.pw_uid)


def test_a_controller_table_grants_and_denies_capabilities(supervisor_factory, capfd) -> None:
    """Granted declares nothing and its table grants CAP_NET_ADMIN; Excepted
    declares CAP_NET_RAW, which [isolation] deny lists and its table grants;
    Denied declares CAP_NET_ADMIN, which its table denies: refused, the
    others run. A table naming no controller (a typo) is logged."""
    modules = {"granted": _probe("Granted"), "excepted": _probe("Excepted", caps='["CAP_NET_RAW"]'),
               "denied": _probe("Denied", caps='["CAP_NET_ADMIN"]'), "plain": _probe("Plain")}
    config = _config({"Granted": 'grant = ["CAP_NET_ADMIN"]', "Excepted": 'grant = ["CAP_NET_RAW"]',
                      "Denied": 'deny = ["CAP_NET_ADMIN"]', "Grnated": 'deny = ["CAP_NET_ADMIN"]'},
                     isolation='deny = ["CAP_NET_RAW"]\n')
    sup = supervisor_factory(config=config, controllers=modules)
    granted, _excepted, plain = (_reported(sup, cls) for cls in ("Granted", "Excepted", "Plain"))
    for cls, caps in (("Granted", NET_ADMIN), ("Excepted", NET_RAW), ("Plain", 0)):
        proc = _proc_status(sup.controller_pid(f"test.{cls}"))
        assert [int(proc[k], 16) for k in ("CapPrm", "CapEff", "CapAmb", "CapBnd")] == [caps] * 4, (cls, proc)
    assert granted["mark"] == "set" and plain["mark"] == "EPERM"   # SO_MARK: CAP_NET_ADMIN (or NET_RAW on 5.17+)
    statuses = sup.statuses()
    assert statuses["test.Granted"]["isolation"]["capabilities"] == ["CAP_NET_ADMIN"]
    assert statuses["test.Denied"]["state"] == "refused"
    assert statuses["test.Denied"]["reason"] == \
        'test.Denied declares CAP_NET_ADMIN, which [isolation.controllers."test.Denied"] deny refuses'
    assert 'config: [isolation.controllers."test.Grnated"] names no controller' in capfd.readouterr().err


GENERIC = '''
from cosihost import generic

Built = generic.transform(
    name="test.Built", input=("gin", "GenericIns.test.cosihost.dev"),
    output=("gout", "GenericOuts.test.cosihost.dev"), transform=lambda rt, inp, out: out.spec.update(ok=True),
    user={user!r})
'''


def test_a_generic_builder_names_the_user_too(supervisor_factory) -> None:
    """``user=`` of a generic builder is the class attribute of a hand-written
    controller: the built controller runs as that account."""
    (account,) = _accounts(1)
    sup = supervisor_factory(config=_config({}), controllers={"built": GENERIC.format(user=account.pw_name)})
    pid = sup.controller_pid("test.Built")
    assert _proc_status(pid)["Uid"].split() == [str(account.pw_uid)] * 4
    iso = sup.statuses()["test.Built"]["isolation"]
    assert (iso["mode"], iso["user"]) == ("user", account.pw_name)
