"""Beam's own portable job service and worker pool, as subprocesses, for tests
that run Conveyor's Beam components the way a Flink or Spark job server would
(Beam's Job API, workers in other processes).

    with PortableServices(workdir) as services:
        beam_args = services.beam_args()   # --runner=PortableRunner ...

    # Workers that see nothing of the given directories, with extra environment:
    with PortableServices(workdir, hidden=[tmp_dir, data_dir], env=s3.env) as services:
        ...

The worker pool starts each SDK worker the way an SDK container's boot
program (/opt/apache/beam/boot) does: it asks the runner's provision service
for the pipeline options, then runs `apache_beam.runners.worker.sdk_worker_main`,
which honours worker-side options such as `--beam_plugins` (Beam's own
worker_pool_main skips that and runs the harness directly). Workers use this
interpreter (its venv is what a worker image has installed) and import
`conveyor` from there.

With `hidden`, the pool runs in a mount namespace of its own (`unshare
--mount`, needs root or CAP_SYS_ADMIN) in which every hidden directory is an
empty tmpfs: the pool and its workers see none of the files there, while the
test process, the job service and everything else see them as usual.

Each service is the leader of its own process group; stopping kills the
groups, workers included.
"""

from __future__ import annotations

import ctypes
import importlib.util
import inspect
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "PortableServices", "free_ports", "accepts", "die_with_parent", "group_members", "isolation_unavailable",
]

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


def group_members(pgid: int) -> list[str]:
    """'pid (comm) state' of each live (not zombie) process of a process group."""
    members = []
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
        if int(pgrp) == pgid and state != "Z":
            members.append(f"{stat[:stat.rindex(')') + 1]} {state}")
    return members


def isolation_unavailable() -> str:
    """Why a worker pool cannot be given its own mount namespace here ('' if it can)."""
    if not sys.platform.startswith("linux"):
        return f"mount namespaces need Linux, this is {sys.platform}"
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         "mount -t tmpfs conveyor-probe /mnt"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"`unshare --mount` and `mount -t tmpfs` failed (root or CAP_SYS_ADMIN needed): {probe.stderr.strip()}"
    return ""


# -- what runs inside the worker pool's process ----------------------------------
# Both functions are sent as source (`python -c`), not imported: the pool and its
# workers may not see this file (it is under the repo's tests/, which a test may
# hide). Each must import what it uses.


def _worker_boot() -> None:
    """An SDK worker started like the SDK container's boot starts one: the
    pipeline options from the runner's provision service, then
    sdk_worker_main. (The container's boot also installs staged artifacts,
    e.g. --requirements_file; Conveyor stages none.)"""
    import argparse
    import os
    import sys

    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
    from google.protobuf import json_format, text_format

    parser = argparse.ArgumentParser()
    for flag in ("id", "control_endpoint", "logging_endpoint", "provision_endpoint", "artifact_endpoint"):
        parser.add_argument(f"--{flag}", default="")
    args, _ = parser.parse_known_args()
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id)], timeout=60,
        ).info

    def descriptor(url: str) -> str:
        return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

    env = dict(os.environ)
    env.update(
        WORKER_ID=args.id,
        PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
        CONTROL_API_SERVICE_DESCRIPTOR=descriptor(info.control_endpoint.url or args.control_endpoint),
        LOGGING_API_SERVICE_DESCRIPTOR=descriptor(info.logging_endpoint.url or args.logging_endpoint),
        RUNNER_CAPABILITIES=" ".join(info.runner_capabilities),
    )
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


def _worker_pool(boot_source: str) -> None:
    """Beam's EXTERNAL worker pool (worker_pool_main), each worker started by
    `_worker_boot` with this interpreter."""
    import argparse
    import logging
    import os
    import subprocess
    import sys
    import time
    import traceback

    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker import worker_pool_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--service_port", type=int, required=True)
    args = parser.parse_args()

    class BootingPool(worker_pool_main.BeamFnExternalWorkerPoolServicer):
        def StartWorker(self, request, unused_context):  # noqa: N802 - gRPC's name
            flags = [
                f"--id={request.worker_id}",
                f"--control_endpoint={request.control_endpoint.url}",
                f"--logging_endpoint={request.logging_endpoint.url}",
                f"--provision_endpoint={request.provision_endpoint.url}",
                f"--artifact_endpoint={request.artifact_endpoint.url}",
            ]
            # PortableServices.workers_started() counts these lines.
            logging.warning("Starting worker with command %s", [sys.executable, "-c", "<boot>", *flags])
            try:
                # Output goes to the pool's log (Beam's pool sends it to a pipe nobody reads).
                self._worker_processes[request.worker_id] = subprocess.Popen(
                    [sys.executable, "-c", boot_source, *flags], stdin=subprocess.DEVNULL, close_fds=True,
                )
            except Exception:  # noqa: BLE001 - reported to the runner, as Beam's pool does
                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
            return beam_fn_api_pb2.StartWorkerResponse()

    address, _server = BootingPool.start(use_process=True, port=args.service_port)
    logging.info("worker pool listening at %s, pid %d, cwd %s", address, os.getpid(), os.getcwd())
    while True:
        time.sleep(3600)


def _pool_argv(port: int) -> list[str]:
    boot = inspect.getsource(_worker_boot) + "\n_worker_boot()\n"
    pool = inspect.getsource(_worker_pool) + f"\n_worker_pool({boot!r})\n"
    return [sys.executable, "-c", pool, f"--service_port={port}"]


def _needed_by_workers() -> list[str]:
    """What a worker image has installed: this interpreter, its venv and the
    conveyor package (the repo itself, in an editable install)."""
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for package in ("conveyor", "apache_beam"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            paths.update(spec.submodule_search_locations)
    return sorted(os.path.realpath(p) for p in paths)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _check_hidden(hidden: Iterable[str]) -> list[str]:
    """The directories to hide, real and absolute, each only once (not one
    inside another: the outer tmpfs hides the inner directory anyway)."""
    dirs = []
    for d in hidden:
        real = os.path.realpath(d)
        if not os.path.isdir(real):
            raise ValueError(f"hidden directory {d!r} does not exist (a tmpfs can only cover a directory)")
        for needed in _needed_by_workers():
            if _within(needed, real):
                raise ValueError(
                    f"cannot hide {d!r} from the workers: it holds {needed}, which a worker image has "
                    f"(the Python installation and the conveyor package)"
                )
        dirs.append(real)
    dirs = sorted(set(dirs))
    return [d for d in dirs if not any(o != d and _within(d, o) for o in dirs)]


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
        (worker processes the pool did not stop, or a stuck service), and
        wait until the kernel has finished them (on a loaded machine a killed
        process that loaded TensorFlow takes a while to go)."""
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
            deadline = time.monotonic() + 3 * STOP_TIMEOUT
            while group_members(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            self._log.close()


class PortableServices:
    """A local Beam job service and an EXTERNAL worker pool on free localhost ports.

    hidden: directories the worker pool and its workers must not see (each
    becomes an empty tmpfs in the pool's own mount namespace); they must exist
    and must not hold the Python installation or the conveyor package.
    env: extra environment for both services, and so for every worker
    (e.g. the AWS_* variables of an S3 endpoint).
    """

    def __init__(self, workdir: str, *, hidden: Iterable[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.hidden = _check_hidden(hidden)
        self.extra_env = dict(env or {})
        self._services: list[_Service] = []

    def __enter__(self) -> PortableServices:
        os.makedirs(self.workdir, exist_ok=True)
        if self.hidden:
            reason = isolation_unavailable()
            if reason:
                raise RuntimeError(f"cannot start an isolated worker pool: {reason}")
        env = dict(os.environ)
        env.update(self.extra_env)
        # Workers run `sys.executable`; PATH keeps this venv first for anything else they start.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Worker output reaches the pool's log even when a worker is killed; no
        # Google-client deprecation notices at every process start.
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        staging = os.path.join(self.workdir, "staging")
        self.job_port, self.worker_port = free_ports(2)
        pool_argv = _pool_argv(self.worker_port)
        if self.hidden:
            # One tmpfs over each hidden directory, private to this namespace;
            # then leave the old working directory (it may be under a hidden one).
            script = (
                'set -e; for d in "$@"; do mount -t tmpfs -o mode=1777 conveyor-hidden "$d"; done; '
                f"cd /; exec {shlex.join(pool_argv)}"
            )
            pool_argv = ["unshare", "--mount", "--propagation", "private", "--",
                         "sh", "-c", script, "conveyor-isolated-pool", *self.hidden]
        try:
            self._services = [
                _Service("job_service", [
                    sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                    f"--port={self.job_port}", f"--staging_dir={staging}",
                ], self.job_port, self.workdir, env),
                _Service("worker_pool", pool_argv, self.worker_port, self.workdir, env),
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
        return [p for s in self._services for p in group_members(s.proc.pid)]

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
        return self.pool_log().count("Starting worker with command")

    def pool_log(self) -> str:
        """The worker pool's log, with what its workers wrote to stdout and stderr."""
        with open(self._services[1].log_path, errors="replace") as f:
            return f.read()

    def logs(self, lines: int = 60) -> str:
        """The end of each service's log (worker output is in the pool's; what
        workers log through Beam's logging service is in the job service's)."""
        return "\n".join(f"--- {s.name} ({s.log_path}):\n{s.log_tail(lines)}" for s in self._services)
