"""Helpers for the CLI tests: the ``shop`` controllers, and ``Cli``, which
runs ``python -m cosihost`` as a child process pointed at a supervisor
through COSIHOST_RUNTIME_DIR."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

SHOP = '''
from cosihost import Controller, Input, NotFoundError, Output, ResourceDefinition

ORDERS = "Orders.test.cosihost.dev"
WIDGETS = "Widgets.test.cosihost.dev"
RECEIPTS = "Receipts.test.cosihost.dev"


class WidgetMaker(Controller):
    """A widget per order; holds each order with a finalizer until its widget is gone."""
    name = "test.WidgetMaker"
    inputs = [Input("shop", ORDERS, kind="strong")]
    outputs = [Output(WIDGETS, kind="exclusive"), Output(RECEIPTS, kind="shared")]
    definitions = [
        ResourceDefinition(WIDGETS, aliases=("widget", "widgets"), default_namespace="shop",
                           print_columns=(("COLOR", "color"), ("SIZE", "dims.size"))),
        ResourceDefinition(ORDERS, aliases=("order", "orders"), default_namespace="shop",
                           print_columns=(("COLOR", "color"),)),
        ResourceDefinition("Tokens.test.cosihost.dev", aliases=("token", "tokens"), default_namespace="vault",
                           print_columns=(("VALUE", "value"),), sensitive=True),
    ]

    def reconcile(self, rt):
        for order in rt.list("shop", ORDERS):
            oid = order.metadata.id
            if order.metadata.phase == "tearing-down":
                if self.name in order.metadata.finalizers:
                    try:
                        rt.destroy("shop", WIDGETS, oid)
                    except NotFoundError:
                        pass
                    rt.remove_finalizer("shop", ORDERS, oid, self.name)
                continue
            rt.add_finalizer("shop", ORDERS, oid, self.name)
            color, size = order.spec.get("color"), order.spec.get("size", 1)
            rt.modify("shop", WIDGETS, oid, lambda s: s.update(color=color, dims={"size": size}))
            rt.modify("shop", RECEIPTS, "maker-" + oid, lambda s: s.update(order=oid))


class Auditor(Controller):
    name = "test.Auditor"
    inputs = [Input("shop", WIDGETS, kind="weak")]
    outputs = [Output(RECEIPTS, kind="shared")]

    def reconcile(self, rt):
        for w in rt.list("shop", WIDGETS):
            rt.modify("shop", RECEIPTS, "audit-" + w.metadata.id, lambda s: s.update(seen=True))
'''


class Cli:
    """``python -m cosihost ...`` with COSIHOST_RUNTIME_DIR set."""

    def __init__(self, runtime_dir: Path | str) -> None:
        self.env = dict(os.environ, COSIHOST_RUNTIME_DIR=str(runtime_dir))
        self.procs: list[subprocess.Popen[str]] = []

    def __call__(self, *args: str, input: str | None = None, timeout: float = 30,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cosihost", *args], input=input, capture_output=True,
                              text=True, timeout=timeout, env=env or self.env)

    def ok(self, *args: str, **kwargs: Any) -> str:
        done = self(*args, **kwargs)
        assert done.returncode == 0, f"cosihost {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    def fails(self, *args: str, **kwargs: Any) -> str:
        """Runs a command that must fail with one clear line (no traceback)."""
        done = self(*args, **kwargs)
        assert done.returncode != 0, f"cosihost {' '.join(args)} succeeded: {done.stdout}"
        assert "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
        return lines[0]

    def inproc(self, *args: str) -> tuple[int, str, str]:
        """The same command in this process (click's runner): for the many
        variations of one case, where starting an interpreter each time
        would only cost time. Returns (exit code, stdout, stderr)."""
        from click.testing import CliRunner

        from cosihost.cli import main
        try:
            runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
        except TypeError:
            runner = CliRunner()
        result = runner.invoke(main, list(args), env={"COSIHOST_RUNTIME_DIR": self.env["COSIHOST_RUNTIME_DIR"]})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    def stream(self, *args: str) -> "Lines":
        proc = subprocess.Popen([sys.executable, "-m", "cosihost", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)
        self.procs.append(proc)
        return Lines(proc)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for fh in (proc.stdout, proc.stderr):
                if fh is not None:
                    fh.close()


class Lines:
    """The stdout lines of a running command, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = 15.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from cosihost within {timeout:g} s") from None
        if line is None:
            raise AssertionError(f"cosihost ended: {self.proc.wait()} {self.proc.stderr.read()}")
        return line
