"""A run's console and its logs.

A quiet run (LocalRunner's default; `conveyor run` without -v) shows only
Conveyor's own lines, one per node state, with a live display of the
running nodes when stdout is a terminal, and sends what libraries print
(TensorFlow, absl, Beam, Keras) to log files under the pipeline root:

    <root>/_logs/<run_id>/<component_id>-<execution_id>.log  each execution that ran
    <root>/_logs/<run_id>/run.log                             the rest of the process's output

An execution's log path is recorded on it in MLMD (`__log_path__`, see
`conveyor lineage logs`). With an object-store root the logs are written to
local files during the run and copied there when their node (or the run)
ends.

What reaches an execution's log depends on the launcher:

* "process": everything the node's process wrote to its stdout and stderr
  (file descriptors 1 and 2: Python, logging, Beam, TensorFlow's C++ logs).
* "thread": file descriptors are the process's, not a thread's, so during
  the run fds 1 and 2 point at run.log (Conveyor's lines reach the terminal
  through a copy of the original stdout). Python-level output (print, Keras
  progress, logging and warnings through sys.stdout/sys.stderr or a stream
  handler on them) goes to the log of the node whose thread wrote it; output
  of threads that no node owns (Beam's workers) goes to the running node's
  log when exactly one node runs, else to run.log; output written straight
  to the fds (TensorFlow's C++ logs) is in run.log. Each log says so in its
  first lines.

Nothing here happens on import: a run starts and undoes it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from conveyor import fs

__all__ = ["LOG_DIR", "RUN_LOG", "LogFile", "Capture", "Console", "execution_log_path", "run_log_path", "quiet"]

LOG_DIR = "_logs"
RUN_LOG = "run.log"


def run_log_dir(root: str, run_id: str) -> str:
    return fs.join(root, LOG_DIR, run_id.replace("/", "_"))


def run_log_path(root: str, run_id: str) -> str:
    return fs.join(run_log_dir(root, run_id), RUN_LOG)


def execution_log_path(root: str, run_id: str, component_id: str, execution_id: int) -> str:
    return fs.join(run_log_dir(root, run_id), f"{component_id}-{execution_id}.log")


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class LogFile:
    """A log being written. `path` is where it is kept (and recorded);
    `local` the file written meanwhile: `path` itself under a local root,
    a scratch file that `close` copies to `path` under an object-store root
    (a file descriptor, which fd redirection needs, is only ever local)."""

    def __init__(self, path: str, header: str = "") -> None:
        self.path = path
        if fs.is_remote(path):
            fd, self.local = tempfile.mkstemp(prefix="conveyor-", suffix="-" + fs.basename(path))
            os.close(fd)
        else:
            self.local = path[len("file://"):] if path.startswith("file://") else path
            fs.makedirs(os.path.dirname(os.path.abspath(self.local)))
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        self._closed = False
        self.write(header)

    def write(self, text: str) -> None:
        """Append `text` (a note of ours: the header, the outcome)."""
        with self._lock:
            if self._stream is not None:
                self._stream.flush()
            fd = self.open_fd()
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)

    def open_fd(self) -> int:
        """A new file descriptor appending to the local file (the caller closes it)."""
        return os.open(self.local, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def stream(self) -> IO[str]:
        """A text stream appending to the local file, kept until `close`."""
        with self._lock:
            if self._stream is None:
                self._stream = open(self.open_fd(), "a", encoding="utf-8", errors="replace", buffering=1)
            return self._stream

    def close(self) -> str | None:
        """Finish the log (copy it to an object store); what went wrong, if anything."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            if self._stream is not None:
                self._stream.close()
        if self.local == self.path:
            return None
        try:
            fs.copy(self.local, self.path)
        except Exception as e:  # noqa: BLE001 - a lost log must not fail the run
            return f"could not copy the log to {self.path} ({type(e).__name__}: {e}); it stays at {self.local}"
        os.remove(self.local)
        return None


class _ThreadStream:
    """sys.stdout or sys.stderr during a quiet run: what a node's thread
    writes goes to its log, the rest where it went before. After the run it
    passes everything on, for the loggers that captured it meanwhile."""

    def __init__(self, original: Any, capture: Capture, fd: int) -> None:
        self._original = original
        self._capture = capture
        self._fd = fd

    def write(self, text: str) -> int:
        target = self._capture.target(self._fd)
        if target is not None:
            with self._capture.lock:
                try:
                    return target.write(text)
                except ValueError:  # the node's log closed meanwhile: its thread outlived it
                    pass
        return self._original.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        target = self._capture.target(self._fd)
        if target is not None:
            with self._capture.lock, contextlib.suppress(ValueError):
                target.flush()
        self._original.flush()

    def isatty(self) -> bool:
        # Nothing the libraries write now reaches a terminal: no progress
        # bars redrawn with escape codes in a log.
        return False if self._capture.active else self._original.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class Capture:
    """The process's output during quiet runs (one at a time per process:
    overlapping runs share the first one's, see `quiet`)."""

    def __init__(self, run_log: LogFile) -> None:
        self.run_log = run_log
        self.lock = threading.RLock()
        self.active = False
        self._local = threading.local()
        self._threads: dict[int, IO[str]] = {}  # a node's thread -> its log
        self._running: dict[int, int] = {}  # id(log stream) -> threads writing to it
        self._schedulers: set[int] = set()  # threads running a run: never a node's
        self._saved: dict[int, int] = {}
        self._terminal: dict[int, Any] = {}
        self._own_terminal: list[Any] = []
        self._originals: dict[int, Any] = {}
        self._streams: dict[int, _ThreadStream] = {}
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    # -- the process ---------------------------------------------------------------
    def start(self) -> None:
        originals = {1: sys.stdout, 2: sys.stderr}
        for stream in originals.values():
            if stream is not None:
                stream.flush()  # what was written before the run goes where it was going
        fd = self.run_log.open_fd()
        try:
            for n in (1, 2):
                self._saved[n] = os.dup(n)
                # Our lines go to the terminal (or wherever stdout went): a copy
                # of the fd when sys.stdout writes to it, else sys.stdout itself
                # (pytest's capture, a notebook's stream).
                original = originals[n]
                if original is not None and _fileno(original) == n:
                    terminal = open(os.dup(self._saved[n]), "w", buffering=1,
                                    encoding=getattr(original, "encoding", None) or "utf-8", errors="replace")
                    self._own_terminal.append(terminal)
                else:
                    terminal = original
                self._terminal[n] = terminal
            for n in (1, 2):
                os.dup2(fd, n)
        except BaseException:
            self._restore_fds()
            raise
        finally:
            os.close(fd)
        self.active = True
        for n, original in originals.items():
            if original is None:
                continue
            self._originals[n] = original
            self._streams[n] = _ThreadStream(original, self, n)
        if 1 in self._streams:
            sys.stdout = self._streams[1]
        if 2 in self._streams:
            sys.stderr = self._streams[2]
        self._swap_handlers(originals)

    def _swap_handlers(self, originals: dict[int, Any]) -> None:
        """Stream handlers made before the run (TensorFlow's own) hold the
        stream they were given: while the run lasts they write through ours."""
        by_stream = {}
        for n, stream in ((1, sys.__stdout__), (2, sys.__stderr__), *originals.items()):
            if stream is not None and n in self._streams:
                by_stream[id(stream)] = self._streams[n]
        loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                          if isinstance(x, logging.Logger))]
        for logger in loggers:
            for handler in list(logger.handlers):
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and id(handler.stream) in by_stream):
                    old = handler.setStream(by_stream[id(handler.stream)])
                    self._handlers.append((handler, old))

    def stop(self) -> None:
        """Everything back as it was, whatever happened during the run."""
        with self.lock:
            self._threads.clear()
            self._running.clear()
        for stream in self._streams.values():
            with contextlib.suppress(Exception):
                stream.flush()
        for handler, old in self._handlers:
            if handler.stream in self._streams.values():
                with contextlib.suppress(Exception):
                    handler.setStream(old)
        self.active = False
        if sys.stdout is self._streams.get(1):
            sys.stdout = self._originals[1]
        if sys.stderr is self._streams.get(2):
            sys.stderr = self._originals[2]
        for stream in self._originals.values():
            with contextlib.suppress(Exception):
                stream.flush()
        self._restore_fds()
        for terminal in self._own_terminal:
            with contextlib.suppress(Exception):
                terminal.close()

    def _restore_fds(self) -> None:
        for n, saved in self._saved.items():
            os.dup2(saved, n)
            os.close(saved)
        self._saved.clear()

    # -- threads ---------------------------------------------------------------
    def terminal(self, fd: int = 1) -> Any:
        """Where our own lines go: the terminal, or what stood for it."""
        return self._terminal[fd]

    @contextlib.contextmanager
    def to_terminal(self) -> Iterator[None]:
        """What this thread writes meanwhile (our lines, through a caller's
        `echo`) goes to the terminal, not to a log."""
        before = getattr(self._local, "terminal", False)
        self._local.terminal = True
        try:
            yield
        finally:
            self._local.terminal = before

    @contextlib.contextmanager
    def scheduler(self) -> Iterator[None]:
        """This thread runs a run: its output is never a node's."""
        ident = threading.get_ident()
        with self.lock:
            self._schedulers.add(ident)
        try:
            yield
        finally:
            with self.lock:
                self._schedulers.discard(ident)

    @contextlib.contextmanager
    def node(self, log: LogFile) -> Iterator[None]:
        """What this thread writes meanwhile goes to `log`."""
        stream = log.stream()
        ident = threading.get_ident()
        with self.lock:
            self._threads[ident] = stream
            self._running[id(stream)] = self._running.get(id(stream), 0) + 1
        try:
            yield
        finally:
            with self.lock:
                if self._threads.pop(ident, None) is stream:
                    self._running[id(stream)] -= 1
                    if not self._running[id(stream)]:
                        del self._running[id(stream)]
                stream.flush()

    def target(self, fd: int) -> Any | None:
        """Where a write to fd 1 or 2 from this thread goes (None: where it
        went before the run, i.e. run.log)."""
        if not self.active:
            return None
        if getattr(self._local, "terminal", False):
            return self._terminal.get(fd)
        ident = threading.get_ident()
        with self.lock:
            found = self._threads.get(ident)
            if found is None and ident not in self._schedulers and len(self._running) == 1:
                # A thread no node owns (a Beam worker) while one node runs: that node's.
                found = next(iter(self._threads.values()))
            return found


_CAPTURE: Capture | None = None
_CAPTURE_USERS = 0
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet(run_log: LogFile) -> Iterator[Capture]:
    """The process's output goes to `run_log` (and node logs) while the
    block runs; restored after, also on an exception. A run overlapping
    another quiet run of this process (in another thread) shares its
    redirection: fd-level output then stays in the first run's run.log."""
    global _CAPTURE, _CAPTURE_USERS
    with _CAPTURE_LOCK:
        if _CAPTURE is None:
            capture = Capture(run_log)
            capture.start()
            _CAPTURE = capture
        else:
            capture = _CAPTURE
            run_log.write(f"# output written straight to file descriptors during this run went to "
                          f"{capture.run_log.path}: another run of this process was in progress\n")
        _CAPTURE_USERS += 1
    try:
        with capture.scheduler():
            yield capture
    finally:
        with _CAPTURE_LOCK:
            _CAPTURE_USERS -= 1
            if not _CAPTURE_USERS:
                _CAPTURE = None
                capture.stop()


class Console:
    """A run's own lines: to `echo` when the caller gave one, else to the
    terminal (`capture`'s, during a quiet run; sys.stdout otherwise), with a
    live display of the running nodes and their elapsed time when that is a
    terminal and the run is quiet (a verbose run's library output would
    tear it). Every line is also appended to `run_log`."""

    def __init__(self, echo: Callable[[str], None] | None, capture: Capture | None,
                 run_log: LogFile | None = None, name: str = "", total: int = 0) -> None:
        self._echo = echo
        self._capture = capture
        self._run_log = run_log
        self._lock = threading.Lock()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._overall: Any = None
        self._name, self._total, self._done = name, total, 0
        terminal = capture.terminal() if capture is not None else None
        if echo is None and terminal is not None and _isatty(terminal):
            self._progress = _live(terminal)
            self._overall = self._progress.add_task(self._summary(), total=None)

    def say(self, line: str) -> None:
        if self._run_log is not None:
            self._run_log.write(line + "\n")
        with self._capture.to_terminal() if self._capture is not None else contextlib.nullcontext():
            if self._echo is not None:
                self._echo(line)
            elif self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
            else:
                out = self._capture.terminal() if self._capture is not None else sys.stdout
                if out is None:
                    return  # no stdout at all (pythonw): the line is in run.log
                with self._lock:
                    out.write(line + "\n")
                    out.flush()

    def running(self, node: str) -> None:
        if self._progress is not None:
            with self._lock:
                self._tasks[node] = self._progress.add_task(node, total=None)
                self._progress.refresh()

    def ended(self, node: str, counted: bool = True) -> None:
        if self._progress is None:
            return
        with self._lock:
            task = self._tasks.pop(node, None)
            if task is not None:
                self._progress.remove_task(task)
            self._done += counted
            self._progress.update(self._overall, description=self._summary())
            self._progress.refresh()

    def _summary(self) -> str:
        return f"pipeline {self._name}: {self._done} of {self._total} nodes done"

    def close(self) -> None:
        """The live display goes; later lines go to `echo` or sys.stdout."""
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._progress.stop()
            self._progress = None
        self._capture = self._run_log = None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _live(terminal: Any) -> Any:
    """A rich live display on `terminal`, our lines printed above it."""
    from rich.console import Console as RichConsole
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    try:
        width, height = os.get_terminal_size(terminal.fileno())
    except (AttributeError, OSError, ValueError):
        width, height = 0, 0
    width, height = width or 80, height or 25  # a pseudo-terminal may report 0 x 0
    # Rich sizes itself from fds 0-2, which point at run.log now; and it
    # must not take over sys.stdout/sys.stderr, which the capture owns.
    console = RichConsole(file=terminal, width=width, height=height, force_terminal=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=True, redirect_stdout=False, redirect_stderr=False, refresh_per_second=4)
    progress.start()
    return progress
