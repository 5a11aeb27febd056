"""``[isolation] enabled``: "auto" (the default) is on exactly when the
supervisor runs as root; false turns it off; nothing else is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosihost import InvalidRequestError
from cosihost.settings import Settings


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
