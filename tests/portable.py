"""Beam's own portable job service and worker pool, as subprocesses, for tests
that run Conveyor's Beam components the way a Flink or Spark job server would
(Beam's Job API, workers in other processes).

    with PortableServices(workdir) as services:
        beam_args = services.beam_args()   # --runner=PortableRunner ...

The worker pool starts one SDK worker process per job with `python` from
PATH, so PATH starts with this interpreter's directory: the workers run in
the same venv and import `conveyor` from there. Each service is the leader of
its own process group; stopping kills the groups, workers included.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PortableServices", "free_ports", "accepts", "die_with_parent"]

START_TIMEOUT = 120.0  # seconds; a service imports Beam (and TF via TFX-BSL) before it listens
STOP_TIMEOUT = 10.0


def free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on now (all held open while choosing)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=0.5):
            return True
    except OSError:
        return False


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for Popen(preexec_fn=) that has the kernel kill the
    child when the thread that started it dies: a test run killed with SIGKILL
    (a cancelled CI job) gets no teardown, and the services would outlive it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return set_pdeathsig


class _Service:
    def __init__(self, name: str, argv: list[str], port: int, workdir: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        # A new session makes the service the leader of a process group that
        # its worker processes join: one killpg stops them all.
        self.proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(),
        )

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} before listening on port "
                    f"{self.port}; its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if accepts(self.port):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not accept connections on port {self.port} within "
                    f"{START_TIMEOUT:.0f} s; its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever of it is left
        (worker processes the pool did not stop, or a stuck service)."""
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass  # the whole group is gone
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self._log.close()


class PortableServices:
    """A local Beam job service and an EXTERNAL worker pool on free localhost ports."""

    def __init__(self, workdir: str) -> None:
        self.workdir = os.path.abspath(workdir)
        self._services: list[_Service] = []

    def __enter__(self) -> PortableServices:
        os.makedirs(self.workdir, exist_ok=True)
        env = dict(os.environ)
        # The pool runs `python -c ...` for each worker: it must be this venv's python.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        staging = os.path.join(self.workdir, "staging")
        self.job_port, self.worker_port = free_ports(2)
        try:
            self._services = [
                _Service("job_service", [
                    sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                    f"--port={self.job_port}", f"--staging_dir={staging}",
                ], self.job_port, self.workdir, env),
                _Service("worker_pool", [
                    sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                    f"--service_port={self.worker_port}",
                ], self.worker_port, self.workdir, env),
            ]
            deadline = time.monotonic() + START_TIMEOUT
            for service in self._services:
                service.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        for service in self._services:
            service.stop()

    def leftover_processes(self) -> list[str]:
        """Live (not zombie) processes of the services' groups: none once stopped."""
        groups = {s.proc.pid for s in self._services}
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # exited meanwhile
            # pid (comm) state ppid pgrp ...: comm may contain spaces, so split after ')'.
            state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
            if int(pgrp) in groups and state != "Z":
                left.append(f"{entry} {stat[:stat.rindex(')') + 1]}")
        return left

    def beam_args(self) -> list[str]:
        """Flags that send a Beam pipeline to this job service, its SDK
        workers started by this worker pool."""
        return [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{self.job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{self.worker_port}",
            "--sdk_worker_parallelism=1",
        ]

    def jobs(self) -> dict[str, str]:
        """{job id: state name} of every job the job service has run, from
        its Job API: proof that a pipeline went through it."""
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

        with grpc.insecure_channel(f"localhost:{self.job_port}") as channel:
            stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
            response = stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30)
        states = beam_job_api_pb2.JobState.Enum
        return {info.job_id: states.Name(info.state) for info in response.job_info}

    def workers_started(self) -> int:
        """How many SDK worker processes the pool has started (it logs each)."""
        pool = self._services[1]
        with open(pool.log_path, errors="replace") as f:
            return f.read().count("Starting worker with command")
