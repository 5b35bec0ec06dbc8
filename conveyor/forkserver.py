"""Each node in a process of its own, at the cost of a fork: the fork server.

LocalRunner's default launcher (`launcher="fork"`). A run starts one server
process, `python -m conveyor.launch --fork-server`, the first time a node
must really run (a fully cached run starts none). The server imports the
stack the standard components use (`conveyor.launch.WARM_MODULES`, never
user code) in its one thread and forks a child per node. The child runs the
node's invocation exactly as `python -m conveyor.launch` would (its output
to the node's log) and exits; so each node gets a fresh process, with its own
TensorFlow state, modules and sys.path, that can be killed with its process
group, without importing TensorFlow once per node.

Forking is safe here because the server never runs a TensorFlow op, starts
no thread of its own and touches no Beam or gRPC state: what the imports
start (pyarrow's and jemalloc's threads) is fork-aware. The server imports
module by module and checks for a request between two. A request names the
modules its node needs (its component's `EXECUTOR_IMPORTS`): the server
imports those of its own list first, then forks, and the child imports
anything else it uses itself. The server imports more cheaply than a child: with the
collector off, once for every later node, and Beam without the Google
Cloud IO it re-exports (`launch._server_import`). So StatisticsGen, asked
for while TensorFlow is being imported, waits for Beam and TFDV, not for
tf.Transform and TFMA.

Protocol: requests are JSON lines on the server's stdin,
`{"id": N, "invocation": PATH, "result": PATH, "needs": [MODULE, ...]}`;
answers are JSON lines on the file descriptor named by `--reply-fd`:
`{"id": N, "pid": PID}` from the server once the child is forked,
`{"done": N, "code": CODE}` from the child itself once its result is
written and it is about to exit, and `{"pid": PID, "code": CODE}` from the
server once it has reaped the child (CODE as `os.waitstatus_to_exitcode`:
negative for a signal). A node is over at the first of the last two. The
child's own word saves the ~50 ms the kernel takes to tear down a process
of a GB, and the time the server spends inside an import before it can
reap (0.24 s for the taxi ExampleGen, which ends while TensorFlow is being
imported); the server's covers a child that died without a word. At end
of input the server waits for its children and exits.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import IO

__all__ = ["ForkServer", "serve", "die_with_parent", "available", "stop_groups", "tail", "write_private"]


def available() -> bool:
    """Whether this platform can run the fork server (Linux: fork and pidfds)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(os, "pidfd_open")


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, for Popen(preexec_fn=) or a forked child: the kernel kills
    the process when the thread that started it dies, so a `kill -9` of the
    run leaves nothing running on."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return set_pdeathsig


# -- the server (in its own process) ----------------------------------------------


def serve(reply_fd: int, modules: Sequence[str],
          run: Callable[[str, str | None], int], finish: Callable[[], None],
          load: Callable[[str], object] = importlib.import_module) -> int:
    """The server's loop: import `modules` one by one (`load(name)`) while
    no request waits; per request, import those of `modules` it needs (no
    other: what a module does when imported, such as starting threads,
    could make the forks unsafe), then fork a child, which calls
    `run(invocation, result)`, then `finish()` (what a process does before
    it leaves), says it is done and exits; report children's pids and exit
    codes on `reply_fd`. Returns once input has ended and every child has
    been reaped."""
    reply = os.fdopen(reply_fd, "w", buffering=1, encoding="utf-8")
    # No collections here: importing the stack makes ~1M long-lived objects
    # and ~5k of garbage, and the collector's passes over them took ~1 s of
    # the ~4 s of imports before the first Beam node can start. Each child
    # turns the collector back on.
    gc.disable()
    pending = list(modules)

    def warm(name: str) -> None:
        pending.remove(name)
        try:
            load(name)
        except ImportError:
            pass  # not installed: the executor that needs it reports it

    children: dict[int, int] = {}  # pidfd -> pid
    buffered = b""
    ended = False
    on_death = die_with_parent()
    server = os.getpid()
    while not (ended and not children):
        watched = ([] if ended else [0]) + list(children)
        ready, _, _ = select.select(watched, [], [], 0 if pending else None)
        if not ready and pending:
            warm(pending[0])
            continue
        for fd in ready:
            if fd != 0:
                pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                reply.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
                continue
            chunk = os.read(0, 1 << 16)
            if not chunk:
                ended = True
                continue
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                if not line.strip():
                    continue
                request = json.loads(line)
                for name in request.get("needs", ()):
                    if name in pending:
                        warm(name)
                # Out of the collector's sight: a child's collections would
                # otherwise write to every object the imports made, copying
                # the pages it shares with this process (hundreds of MB).
                gc.freeze()
                pid = os.fork()
                if pid == 0:
                    _child(request, server, reply_fd, list(children), on_death, run, finish)
                children[os.pidfd_open(pid)] = pid
                reply.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
    return 0


def _child(request: dict, server: int, reply_fd: int, inherited: list[int], on_death: Callable[[], None] | None,
           run: Callable[[str, str | None], int], finish: Callable[[], None]) -> None:
    """In the forked child: a process group of its own (a stopped run kills
    it whole), dead with the server, no handle of the server's but a private
    copy of the reply pipe to say it is done; then the node. Never returns."""
    code = 70
    done = -1
    try:
        os.setsid()
        if on_death is not None:
            on_death()
            if os.getppid() != server:  # the server died before the line above
                os._exit(code)
        # os.dup's copy is closed on exec; a process the node forks closes it
        # too, so that nothing outlives the node holding the run's pipe open.
        done = os.dup(reply_fd)
        os.register_at_fork(after_in_child=functools.partial(_close_quietly, done))
        for fd in [reply_fd, *inherited]:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        gc.enable()  # off in the server (see serve)
        code = run(request["invocation"], request.get("result"))
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    try:
        finish()
        if done >= 0:
            os.write(done, (json.dumps({"done": request["id"], "code": code}) + "\n").encode())
    except BaseException:  # noqa: BLE001 - leave whatever happens; the server reports the exit
        pass
    os._exit(code)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# -- the client (in the run's process) --------------------------------------------


@dataclasses.dataclass
class _Request:
    id: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    pid: int | None = None
    code: int | None = None


class ForkServer:
    """A run's fork server, seen from the run's process: `start` it (once,
    from a thread that lives as long as the run), `run` invocations from
    any thread, `close` it at the end or `stop` it, killing every node,
    when the run is stopped. With `inherit_output` (a verbose run) the
    server and its children write where this process does; else to a
    scratch file, until a node's invocation points its child at its log."""

    def __init__(self, inherit_output: bool = False) -> None:
        self._inherit_output = inherit_output
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._requests: dict[int, _Request] = {}
        self._by_pid: dict[int, _Request] = {}
        self._next_id = 0
        self._stopped = False
        self._scratch = ""
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            if self._stopped:
                raise RuntimeError("the run was stopped")
            self._scratch = tempfile.mkdtemp(prefix="conveyor-forkserver-")
            read_end, write_end = os.pipe()
            argv = [sys.executable, "-m", "conveyor.launch", "--fork-server", "--reply-fd", str(write_end)]
            out: IO | None = None
            try:
                if not self._inherit_output:
                    out = open(os.path.join(self._scratch, "output"), "wb")  # noqa: SIM115 - closed below
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=out, stderr=out, pass_fds=(write_end,),
                    start_new_session=True, preexec_fn=die_with_parent(),
                )
            finally:
                os.close(write_end)
                if out is not None:
                    out.close()
            self._reader = threading.Thread(target=self._read, args=(read_end,), name="conveyor-forkserver",
                                            daemon=True)
            self._reader.start()

    @property
    def returncode(self) -> int | None:
        """The server's exit status once it has ended (negative: the signal
        that ended it), else None."""
        return self._proc.returncode if self._proc is not None else None

    def run(self, invocation_json: str, log_file: str = "",
            needs: Sequence[str] = ()) -> tuple[int | None, str | None, str]:
        """Run one invocation (its JSON) in a forked child, once the server
        has imported the modules it `needs`, and wait for it: (exit code or
        None if the server died, the result's JSON or None, the end of what
        the child and the server wrote, for errors)."""
        self.start()
        scratch = tempfile.mkdtemp(prefix="conveyor-node-", dir=self._scratch)
        try:
            request_path, result_path = os.path.join(scratch, "invocation.json"), os.path.join(scratch, "result.json")
            write_private(request_path, invocation_json)
            with self._lock:
                if self._stopped:
                    raise RuntimeError("the run was stopped")
                self._next_id += 1
                request = self._requests[self._next_id] = _Request(self._next_id)
                line = json.dumps({"id": self._next_id, "invocation": request_path, "result": result_path,
                                   "needs": list(needs)})
                assert self._proc is not None and self._proc.stdin is not None
                try:
                    self._proc.stdin.write((line + "\n").encode())
                    self._proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    request.done.set()  # the server is gone: no code
            request.done.wait()
            result = None
            if os.path.exists(result_path):
                with open(result_path, encoding="utf-8") as f:
                    result = f.read()
            ends = "" if result else "\n".join(t for t in (tail(log_file) if log_file else "",
                                                          tail(os.path.join(self._scratch, "output"))) if t)
            return request.code, result, ends
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8") as replies:
            for line in replies:
                message = json.loads(line)
                with self._lock:
                    if "id" in message:  # forked (a quick child may have said it is done already)
                        request = self._requests.get(message["id"])
                        if request is not None:
                            request.pid = message["pid"]
                            self._by_pid[message["pid"]] = request
                        continue
                    if "done" in message:  # the child's own word
                        request = self._requests.get(message["done"])
                    else:  # reaped by the server
                        request = self._by_pid.get(message["pid"])
                    if request is not None:
                        self._requests.pop(request.id, None)
                        self._by_pid.pop(request.pid, None)
                        request.code = message["code"]
                        request.done.set()
        # The server has gone (killed, or exited at end of input): nothing more will end.
        with self._lock:
            for request in [*self._requests.values(), *self._by_pid.values()]:
                request.done.set()
            self._requests.clear()
            self._by_pid.clear()

    def close(self, grace: float = 10.0) -> None:
        """End of the run: no more requests; the server exits once its
        children have (normally none are left). A server never asked to run
        anything is stopped at once rather than left to finish an import."""
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            asked = self._next_id > 0
        if not asked:
            self.stop()
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.stop()
        self._cleanup()

    def stop(self, grace: float = 3.0) -> None:
        """The run was stopped: SIGTERM to every node's process group,
        SIGKILL to what is left after `grace` s, then the server."""
        with self._lock:
            self._stopped = True
            pids = list(self._by_pid)
        # A node's pid names its group (it called setsid); the server reaps it.
        stop_groups({pid: (lambda pid=pid: _alive(pid)) for pid in pids}, grace)
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


def write_private(path: str, text: str) -> None:
    """A new local file only this user may read: an invocation holds the
    real parameters, secrets too."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        f.write(text)


def stop_groups(groups: dict[int, Callable[[], bool]], grace: float = 3.0) -> None:
    """SIGTERM to each process group (by its leader's pid), then SIGKILL to
    all once `grace` s have passed with any leader still alive (each
    group's callable says whether its leader is)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive() for alive in groups.values()):
            time.sleep(0.05)
        if not any(alive() for alive in groups.values()):
            return


def _alive(pid: int) -> bool:
    """Whether a node's process still runs (a zombie, not yet reaped by the
    server, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def tail(path: str, lines: int = 20) -> str:
    """The last `lines` lines of a local file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""
