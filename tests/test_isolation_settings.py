"""``[isolation]`` as data: ``enabled`` is "auto" (the default, on exactly
when the supervisor runs as root), true or false; ``[isolation.controllers."NAME"]``
names a controller's user and grants or denies it capabilities, and the
policy says which capabilities it keeps and why it is refused. The
processes that take these identities are tested in tests/host/test_isolation*.py."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from cosihost import InvalidRequestError
from cosihost.settings import Settings
from cosihost.supervisor.identity import Isolation
from cosihost.supervisor.registry import Declaration


def _build(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "config.toml"
    config.write_text(text)
    return Settings.build(runtime_dir=tmp_path, config=config)


@pytest.mark.parametrize("text, on, asked", [
    ("", True, False),                                # no table: auto
    ('[isolation]\nenabled = "auto"\n', True, False),
    ("[isolation]\nenabled = true\n", True, True),    # asked for: warns when not root
    ("[isolation]\nenabled = false\n", False, False),
])
def test_isolation_defaults_to_auto_and_false_turns_it_off(tmp_path: Path, text: str, on: bool, asked: bool) -> None:
    iso = _build(tmp_path, text).isolation
    assert (iso is not None) == on
    if iso is not None:
        assert iso.asked == asked and (iso.first, iso.last) == (3_000_000, 3_065_535)


def test_an_unknown_isolation_setting_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match='enabled must be "auto"'):
        _build(tmp_path, '[isolation]\nenabled = "yes"\n')


# -- per controller: [isolation.controllers."NAME"] user, grant, deny ----------------------------------

def _iso(tmp_path: Path, text: str) -> Isolation:
    iso = _build(tmp_path, "[isolation]\n" + text).isolation
    assert iso is not None
    return iso


def _decl(name: str, caps: list[str] | None = None, user: str = "") -> Declaration:
    return Declaration.from_wire({"name": name, "capabilities": caps or [], "user": user}, source=f"{name}.py:C")


def _account() -> pwd.struct_passwd:
    """An account other than root, below the default uids (nobody, daemon or another)."""
    accounts = {a.pw_name: a for a in pwd.getpwall() if 0 < a.pw_uid < 3_000_000}
    found = accounts.get("nobody") or accounts.get("daemon") or next(iter(accounts.values()), None)
    if found is None:
        pytest.skip("no account but root in /etc/passwd (useradd --system cosihost-test)")
    return found


@pytest.mark.parametrize("table, message", [
    ('controllers = 3', r'\[isolation.controllers."NAME"\] must be tables'),
    ('[isolation.controllers."a.X"]\nusers = "x"', r'\[isolation.controllers."a.X"\] takes user, grant and deny'),
    ('[isolation.controllers."a.X"]\nuser = 7', "user must be the name of a user"),
    ('[isolation.controllers."a.X"]\ngrant = ["CAP_NOPE"]', r'"a.X"\] grant: unknown capability .CAP_NOPE.'),
    ('[isolation.controllers."a.X"]\ndeny = "CAP_BPF"', r'"a.X"\] deny: capabilities must be a list'),
    ('[isolation.controllers."a.X"]\ngrant = ["CAP_BPF"]\ndeny = ["cap_bpf"]', "both grants and denies CAP_BPF"),
])
def test_bad_controller_tables_are_refused_clearly(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        _iso(tmp_path, table)


def test_a_controller_keeps_what_it_declares_and_what_its_table_grants(tmp_path: Path) -> None:
    iso = _iso(tmp_path, 'deny = ["CAP_SYS_ADMIN", "CAP_NET_RAW"]\n'
                         '[isolation.controllers."a.X"]\ngrant = ["CAP_SYS_ADMIN", "CAP_SYS_TIME"]\n'
                         'deny = ["CAP_NET_ADMIN", "CAP_BPF"]\n')
    assert iso.kept("a.X", _decl("a.X", ["CAP_SYS_ADMIN", "CAP_CHOWN"])) == ["CAP_CHOWN", "CAP_SYS_ADMIN",
                                                                             "CAP_SYS_TIME"]
    # its own grant wins over the global deny; a deny of what it does not declare only keeps it out
    assert iso.refusal("a.X", _decl("a.X", ["CAP_SYS_ADMIN"])) is None
    assert iso.kept("b.Y", _decl("b.Y", ["CAP_CHOWN"])) == ["CAP_CHOWN"]
    assert iso.refusal("a.X", _decl("a.X", ["CAP_NET_ADMIN"])) == \
        'a.X declares CAP_NET_ADMIN, which [isolation.controllers."a.X"] deny refuses'
    assert iso.refusal("a.X", _decl("a.X", ["CAP_NET_RAW"])) == \
        "a.X declares CAP_NET_RAW, which [isolation] deny refuses"
    assert iso.refusal("b.Y", _decl("b.Y", ["CAP_SYS_ADMIN"])) == \
        "b.Y declares CAP_SYS_ADMIN, which [isolation] deny refuses"
    identity = iso.assign("a.X", _decl("a.X"))
    assert identity["capabilities"] == ["CAP_SYS_ADMIN", "CAP_SYS_TIME"] and identity["caps"] == [21, 25]


def test_the_config_names_the_user_over_the_declaration(tmp_path: Path) -> None:
    account = _account()
    iso = _iso(tmp_path, f'[isolation.controllers."a.X"]\nuser = "{account.pw_name}"\n')
    identity = iso.assign("a.X", _decl("a.X", user="root"))
    assert (identity["uid"], identity["gid"], identity["groups"]) == (account.pw_uid, account.pw_gid, [iso.group])
    assert identity["user"] == account.pw_name and identity["shared_with"] == []
    declared = iso.assign("b.Y", _decl("b.Y", user=account.pw_name))
    assert declared["uid"] == account.pw_uid and declared["user"] == account.pw_name
    dynamic = iso.assign("c.Z", _decl("c.Z"))
    assert dynamic["user"] == "" and 3_000_000 <= dynamic["uid"] == dynamic["gid"] <= 3_065_535


def test_a_user_that_is_missing_root_or_among_the_dynamic_uids_is_refused(tmp_path: Path) -> None:
    account = _account()
    iso = _iso(tmp_path, '[isolation.controllers."a.X"]\nuser = "no-such-user-cosihost"\n')
    assert iso.refusal("a.X", _decl("a.X")) == \
        """a.X: user 'no-such-user-cosihost' (from [isolation.controllers."a.X"] user) does not exist"""
    root = str(iso.refusal("b.Y", _decl("b.Y", user="root")))
    assert "user 'root' (from its declaration) is root or in root's group" in root
    around = _iso(tmp_path, f"uids = [{account.pw_uid}, {account.pw_uid + 10}]\n")
    assert f"has uid {account.pw_uid}, inside [isolation] uids" in str(
        around.refusal("b.Y", _decl("b.Y", user=account.pw_name)))


def test_two_controllers_share_a_user_only_when_the_config_names_it_for_both(tmp_path: Path) -> None:
    name = _account().pw_name
    both = _iso(tmp_path, f'[isolation.controllers."a.X"]\nuser = "{name}"\n'
                          f'[isolation.controllers."b.Y"]\nuser = "{name}"\n')
    running = [("a.X", _decl("a.X"))]
    assert both.refusal("b.Y", _decl("b.Y"), running) is None
    assert both.assign("b.Y", _decl("b.Y"))["shared_with"] == ["a.X"]
    assert both.refusal("c.Z", _decl("c.Z", user=name), running) == (
        f"c.Z: user '{name}' (uid {_account().pw_uid}, from its declaration) already runs a.X "
        """(from [isolation.controllers."a.X"] user); controllers share a user only when the config names """
        """it for each of them ([isolation.controllers."NAME"] user)""")
    one = _iso(tmp_path, f'[isolation.controllers."b.Y"]\nuser = "{name}"\n')
    assert "already runs a.X (from its declaration)" in str(
        one.refusal("b.Y", _decl("b.Y"), [("a.X", _decl("a.X", user=name))]))


def test_a_declared_user_must_be_a_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="user must be a user name"):
        Declaration.from_wire({"name": "a.X", "user": 0})
    with pytest.raises(InvalidRequestError, match="user must be a user name"):
        Declaration.from_wire({"name": "a.X", "user": None})


def test_a_table_that_names_no_controller_is_reported_once(tmp_path: Path) -> None:
    iso = _iso(tmp_path, '[isolation.controllers."a.X"]\ndeny = ["CAP_BPF"]\n'
                         '[isolation.controllers."a.Typo"]\ndeny = ["CAP_BPF"]\n')
    assert iso.unknown_tables(["a.X", "b.Y"]) == ["a.Typo"]
    assert iso.unknown_tables(["a.X"]) == []
