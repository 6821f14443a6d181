"""The jobs the page starts: ordinary ``softprompt <command>`` subprocesses, kept in the server process.

A :class:`Job` is one subprocess (``sys.executable -m softprompt ...``); a thread copies its output (stdout and
stderr together) into memory and, once the command has made its output folder its own (softprompt's manifest
is there), into ``<output_dir>/webui.log``. :data:`JOBS` keys the latest job of each kind ("train", "eval", ...),
so a page loaded again (a refresh, another tab) finds a running job and shows it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.outdir import MANIFEST

LOG_NAME = "webui.log"
"""The file in the output folder that holds a job's output."""
TAIL_LINES = 40
"""Lines of output the page shows."""


def softprompt_argv(command: str, argv: list[str]) -> list[str]:
    """The child's command line: this interpreter running the softprompt package."""
    return [sys.executable, "-m", "softprompt", command, *argv]


def child_env() -> dict[str, str]:
    """The server's environment, with the package it runs from first on PYTHONPATH (a source checkout works)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Job:
    """One running or finished ``softprompt`` subprocess."""

    command: str
    """The subcommand (train, eval, ...)."""
    argv: list[str]
    """Its arguments."""
    output_dir: str | None
    """Where the command writes; its output is copied to ``output_dir/webui.log`` once that folder is its own."""
    form: Any = None
    """The form values the job was started from (a reloaded page shows them again)."""
    lines: list[str] = field(default_factory=list)
    """Its output so far."""
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    aborted: bool = False
    _log: Any = None
    _done: threading.Event = field(default_factory=threading.Event)
    """Set once the process ended and all its output was read."""

    def start(self) -> Job:
        self.proc = subprocess.Popen(softprompt_argv(self.command, self.argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
                                     start_new_session=True)
        threading.Thread(target=self._pump, daemon=True, name=f"webui-{self.command}").start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        # only "\n" ends a line: a progress bar redraws its line with "\r", and its last state is what is kept
        for raw in io.TextIOWrapper(self.proc.stdout, encoding="utf-8", errors="replace", newline="\n"):
            line = raw.rstrip("\n").rstrip("\r").rsplit("\r", 1)[-1]
            self.lines.append(line)
            self._write(line + "\n")
        self.proc.wait()
        self._write("")
        if self._log is not None:
            self._log.close()
        self._done.set()

    def _write(self, line: str) -> None:
        """Append to the log file, opening it (with what came before) once the output folder is the job's."""
        if self._log is None:
            if not self.output_dir or not (Path(self.output_dir) / MANIFEST).is_file():
                return
            self._log = open(Path(self.output_dir) / LOG_NAME, "w", encoding="utf-8")
            before = self.lines[:-1] if line else self.lines  # the current line is written below
            self._log.write("".join(f"{x}\n" for x in before))
        if line:
            self._log.write(line)
            self._log.flush()

    @property
    def running(self) -> bool:
        """Until the process ended and its last line was read."""
        return self.proc is not None and not self._done.is_set()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, n: int = TAIL_LINES) -> str:
        return "\n".join(self.lines[-n:])

    def error_line(self) -> str | None:
        """The one-line error a failed command printed (``softprompt X: error: ...``), if any."""
        marker = f"softprompt {self.command}: "
        return next((x for x in reversed(self.lines) if x.startswith(marker)), None)

    def abort(self, grace_s: float = 10.0) -> None:
        """Interrupt the command as Ctrl-C would (it stops cleanly), then terminate it if it lingers."""
        if not self.running:
            return
        self.aborted = True
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._done.wait(timeout)
        return code


JOBS: dict[str, Job] = {}
"""The latest job of each kind; a reloaded page reattaches to it."""
_LOCK = threading.Lock()


def abort_job(kind: str) -> bool:
    """Abort the running job of ``kind``; False when none runs."""
    job = JOBS.get(kind)
    if job is None or not job.running:
        return False
    job.abort()
    return True


def start_job(kind: str, command: str, argv: list[str], output_dir: str | None, form: Any = None) -> Job:
    """Start ``softprompt <command> argv`` as the job of ``kind``; a RuntimeError if one is still running."""
    with _LOCK:
        old = JOBS.get(kind)
        if old is not None and old.running:
            raise RuntimeError(kind)
        JOBS[kind] = Job(command, list(argv), output_dir, form).start()
        return JOBS[kind]


def run_command(command: str, argv: list[str], timeout_s: float = 600) -> tuple[int, str]:
    """Run ``softprompt <command> argv`` to its end: (exit status, its output)."""
    done = subprocess.run(softprompt_argv(command, argv), capture_output=True, text=True, errors="replace",
                          env=child_env(), timeout=timeout_s, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout + done.stderr


def one_line_error(command: str, output: str) -> str:
    """The ``softprompt X: error: ...`` line of a command's output (else its last line)."""
    lines = [x for x in output.splitlines() if x.strip()]
    return next((x for x in reversed(lines) if x.startswith(f"softprompt {command}:")), lines[-1] if lines else "")


def trainer_log(output_dir: str | None) -> list[dict[str, Any]]:
    """The rows of ``output_dir/trainer_log.jsonl`` written so far (a half-written last line is skipped)."""
    path = Path(output_dir or "") / "trainer_log.jsonl"
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
