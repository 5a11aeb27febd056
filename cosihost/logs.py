"""Log lines that read well both in a terminal and in the journal.

Under systemd, stderr is a journal stream (``JOURNAL_STREAM`` names it);
there each line starts with a ``<N>`` syslog priority that journald strips
and records as the line's level (``SyslogLevelPrefix=``, on by default). In a
terminal the prefix would only be noise, so it is left out. Every line names
its component: the supervisor, or the controller that wrote it.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class ComponentFormatter(logging.Formatter):
    def __init__(self, component: str, *, journal: bool) -> None:
        super().__init__()
        self.component = component
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.component}: {record.levelname.lower()}: "
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # Every line names its component, tracebacks included, so grepping
        # for a controller's name finds all it said.
        parts = text.splitlines() or [""]
        lines = [head + parts[0]] + [f"{self.component}:   {line}" for line in parts[1:]]
        if not self.journal:
            return "\n".join(lines)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in lines)


def setup(component: str, *, level: int | str | None = None) -> None:
    """Send this process's log records to stderr, named after ``component``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ComponentFormatter(component, journal=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("COSIHOST_LOG_LEVEL", "INFO").upper())
