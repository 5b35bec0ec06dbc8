"""Beam workers that see nothing of the driver's disk, as on Dataflow, Flink or
Spark: Beam's job service and an EXTERNAL worker pool whose processes run in a
mount namespace where this session's temporary directories and the repo's
examples/ and tests/ are empty tmpfs mounts (tests/portable.py). The workers
keep what a worker image has (the Dockerfile at the repo root): Python, the
Conveyor stack and the conveyor package, nothing of the user's code.

The taxi pipeline then runs with its root and data on S3 (moto on loopback)
and its module file in a directory only the driver sees: it completes only if
Conveyor stages the user's code under the pipeline root and the workers load
it from there. With a local root and a remote runner, staging is impossible
and the run must say so before any Beam job starts.
"""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.examples import REPO, example_dir, node_states
from tests.portable import PortableServices

TAXI = example_dir("taxi")
PIPELINE = os.path.join(TAXI, "pipeline.py")
BUCKET = "conveyor-isolated"
ROOT = f"s3://{BUCKET}/taxi"
DATA = f"s3://{BUCKET}/input/taxi"
EXECUTORS = {
    "csv_example_gen", "statistics_gen", "schema_gen", "example_validator", "transform", "trainer",
    "evaluator", "pusher",
}
# The components that run Beam pipelines (USES_BEAM): one job each.
BEAM_NODES = {"csv_example_gen", "statistics_gen", "transform", "evaluator"}
RUN_TIMEOUT = 1500  # seconds; four Beam jobs, each starting a worker that imports TF, on 2 shared cores


def hidden_dirs(tmp_path_factory) -> list[str]:
    """Everything of the driver's a worker could stumble on: this session's
    temporary files (module files, metadata, local roots), the system temp
    directory, and the repo's examples (data, module files) and tests."""
    hidden = [str(tmp_path_factory.getbasetemp()), os.path.join(REPO, "examples"), os.path.join(REPO, "tests")]
    # The system temp dir too, unless the checkout or the venv lives in it (a
    # worker image has those): pytest's own temp dir, hidden above, holds the
    # user's files either way.
    system_tmp = os.path.realpath(tempfile.gettempdir())
    if not any(os.path.realpath(p).startswith(system_tmp + os.sep) for p in (REPO, sys.prefix)):
        hidden.append(system_tmp)
    return hidden


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """The user's working directory: the module file lives here, and nowhere
    a worker can see."""
    directory = tmp_path_factory.mktemp("user_code")
    shutil.copy(os.path.join(TAXI, "taxi_utils.py"), directory / "taxi_utils.py")
    return directory


@pytest.fixture(scope="module")
def services(tmp_path_factory, s3_server, user_dir):
    with PortableServices(str(tmp_path_factory.mktemp("isolated_services")),
                          hidden=hidden_dirs(tmp_path_factory), env=s3_server.env) as running:
        yield running
    # Neither service nor any worker process of theirs is left running.
    assert running.leftover_processes() == []


def conveyor_run(env: dict[str, str], *beam_args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """`conveyor run` of the taxi pipeline in a child process: tensorflow-io,
    which Conveyor loads for s3://, aborts the process that loaded it at exit
    (tensorflow/io#2039); the CLI exits by os._exit, pytest would not."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", PIPELINE, *beam_args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def test_workers_see_conveyor_but_not_the_hidden_dirs(services, user_dir, s3_server):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    import conveyor

    module_file = str(user_dir / "taxi_utils.py")
    visible = os.path.join(os.path.dirname(conveyor.__file__), "fs.py")
    # The driver sees the module file, the example's data and the repo's package.
    assert os.path.isfile(module_file)
    assert os.path.isfile(os.path.join(TAXI, "data", "data.csv"))
    assert os.path.isfile(visible)

    jobs_before = set(services.jobs())
    workers_before = services.workers_started()
    # Workers start as an SDK container's boot starts them, so they import
    # --beam_plugins first (Conveyor's way to set up TensorFlow's s3://);
    # the standard library's `this` prints the Zen of Python when imported.
    options = PipelineOptions([*services.beam_args(), "--beam_plugins=this"])
    # Only functions of installed modules run in the workers: a function of
    # this file would be unpickled by importing tests.*, which they cannot see.
    with beam.Pipeline(options=options) as p:
        def probe(label, values, fn, *args):
            return p | f"Create[{label}]" >> beam.Create(values) | f"Probe[{label}]" >> beam.Map(fn, *args)

        assert_that(probe("module file", [module_file], os.path.exists), equal_to([False]),
                    label="module file is hidden")
        assert_that(probe("examples", [os.path.join(TAXI, "data", "data.csv")], os.path.exists),
                    equal_to([False]), label="example data is hidden")
        # A hidden directory is there, empty: a tmpfs over it.
        assert_that(probe("examples dir", [os.path.join(REPO, "examples")], os.listdir), equal_to([[]]),
                    label="examples dir is empty")
        assert_that(probe("package", [visible], os.path.exists), equal_to([True]), label="conveyor is visible")
        # Imports the module in the worker, then its __file__.
        imported = probe("import", ["conveyor.components.transform:__file__"], pkgutil.resolve_name)
        assert_that(imported, equal_to([os.path.join(os.path.dirname(conveyor.__file__), "components",
                                                     "transform.py")]), label="conveyor imports")
        # The services pass their extra environment on to the workers.
        assert_that(probe("env", ["AWS_ENDPOINT_URL"], os.getenv), equal_to([s3_server.endpoint]),
                    label="worker environment")

    new_jobs = {j: s for j, s in services.jobs().items() if j not in jobs_before}
    assert list(new_jobs.values()) == ["DONE"]
    assert services.workers_started() > workers_before
    assert "The Zen of Python" in services.pool_log()


def test_taxi_pipeline_runs_on_workers_without_the_module_file(services, s3_server, user_dir, tmp_path):
    s3_server.bucket(BUCKET)
    s3_server.upload_dir(os.path.join(TAXI, "data"), DATA)
    module_file = str(user_dir / "taxi_utils.py")
    env = {
        **os.environ,
        **s3_server.env,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CONVEYOR_TAXI_ROOT": ROOT,
        "CONVEYOR_TAXI_DATA": DATA,
        "CONVEYOR_TAXI_MODULE": module_file,
        "CONVEYOR_TAXI_TRAIN_STEPS": "100",
        "CONVEYOR_TAXI_EVAL_STEPS": "20",
    }
    jobs_before = set(services.jobs())
    workers_before = services.workers_started()
    run = conveyor_run(env, *services.beam_args())
    report = f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}\n{services.logs()}"
    assert run.returncode == 0, report
    states = node_states(run.stdout)
    assert {n for n, s in states.items() if s == "COMPLETE"} == EXECUTORS, report

    # Every Beam component ran as a job of the job service, on the pool's workers.
    new_jobs = {j: s for j, s in services.jobs().items() if j not in jobs_before}
    assert len(new_jobs) >= len(BEAM_NODES) and set(new_jobs.values()) == {"DONE"}, new_jobs
    assert services.workers_started() - workers_before >= len(new_jobs)

    keys = s3_server.keys(BUCKET, "taxi/")
    # The user's code was staged under the root, where the workers found it.
    assert any(re.fullmatch(r"taxi/_code/[^/]+/(.+/)?taxi_utils\.py", k) for k in keys), sorted(keys)[:50]
    pushed = [k for k in keys if k.startswith("taxi/serving_model/") and k.endswith("/saved_model.pb")]
    assert pushed, sorted(keys)[:50]


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback ('' if none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return ""
    return "" if address.startswith("127.") or address == "0.0.0.0" else address


def test_local_root_with_a_remote_runner_fails_before_any_beam_job(tmp_path):
    """Workers of a remote runner cannot read a module file from the driver's
    disk, and with a local root there is nowhere to stage it."""
    user = tmp_path / "user"
    user.mkdir()
    module_file = str(user / "taxi_utils.py")
    shutil.copy(os.path.join(TAXI, "taxi_utils.py"), module_file)
    # A job endpoint on a non-loopback address of this machine, where nothing
    # speaks the Job API: the run must never connect to it.
    address = non_loopback_address()
    listener = None
    if address:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((address, 0))
        listener.listen(8)
        endpoint = f"{address}:{listener.getsockname()[1]}"
    else:
        endpoint = "conveyor-job-server.invalid:8099"
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CONVEYOR_TAXI_ROOT": str(tmp_path / "root"),
        "CONVEYOR_TAXI_DATA": os.path.join(TAXI, "data"),
        "CONVEYOR_TAXI_MODULE": module_file,
        "CONVEYOR_TAXI_TRAIN_STEPS": "100",
        "CONVEYOR_TAXI_EVAL_STEPS": "20",
    }
    try:
        run = conveyor_run(
            env, "--runner=PortableRunner", f"--job_endpoint={endpoint}", "--environment_type=DOCKER",
            "--environment_config=registry.example.com/conveyor-worker:latest",
            # Bounds the wait should a run wrongly try the endpoint.
            "--job_server_timeout=10",
            timeout=600,
        )
        connected = False
        if listener is not None:
            listener.setblocking(False)
            try:
                listener.accept()[0].close()
                connected = True
            except BlockingIOError:
                pass
    finally:
        if listener is not None:
            listener.close()
    output = run.stdout + run.stderr
    report = f"exit code {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode != 0, report
    assert not connected, f"the run connected to the job endpoint {endpoint}\n{report}"
    # Nothing ran: no Beam component, nor any other, completed.
    assert not any(s == "COMPLETE" for s in node_states(run.stdout).values()), report
    # A Conveyor error naming the module file and the way out.
    assert module_file in output, report
    assert "s3://" in output and "gs://" in output, report
    assert re.search(r"pipeline root|root", output, re.I), report
