"""The examples of docs/queue-controllers.md run, and their tests pass."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "queue-controllers.md"


def test_the_guide_examples_and_their_tests_pass() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 5
    scope: dict[str, object] = {"__name__": "queue_controllers_guide"}
    exec(compile("\n".join(blocks), str(DOC), "exec"), scope)
    tests = [name for name in scope if name.startswith("test_")]
    assert tests == ["test_scaler", "test_greeter", "test_reaper"]
    for name in tests:
        scope[name]()  # type: ignore[operator]
