"""Crash-safe resume, re-running from a node, retries, and the definition and
cache holes of issue 6 that live in the orchestrator: a run killed with
SIGKILL in the middle of a node is reconciled and resumed by the next run;
`--from` re-runs a node and its downstream; transient failures are retried
and recorded; unsafe ids and unbound channels fail at definition; code named
by import path is in the cache key; a function component has one type name
however it is launched; secrets never reach MLMD, the IR or the logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner, Pipeline, PipelineDefinitionError
from conveyor.artifacts import Examples, Model
from conveyor.components import CsvExampleGen, Trainer
from conveyor.components.function import OutputArtifact, Parameter, component
from conveyor.errors import ExecutorError
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import cache
from conveyor.pipeline.dsl import Channel, to_jsonable
from tests.lightweight import count_rows, make_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PIPELINE = textwrap.dedent('''
    import os, time
    from conveyor import Pipeline
    from conveyor.artifacts import Examples, Model
    from conveyor.components import component, InputArtifact, OutputArtifact, Parameter

    HERE = os.path.dirname(os.path.abspath(__file__))

    @component
    def make(rows: OutputArtifact[Examples]) -> None:
        open(os.path.join(rows.uri, "rows.txt"), "w").write("a\\nb\\n")

    @component
    def slow(rows: InputArtifact[Examples], model: OutputArtifact[Model]) -> str:
        open(os.path.join(model.uri, "partial.txt"), "w").write("half")
        open(os.path.join(HERE, "started"), "w").write(str(os.getpid()))
        while not os.path.exists(os.path.join(HERE, "go")):
            time.sleep(0.1)
        open(os.path.join(model.uri, "model.txt"), "w").write("whole")
        return "done"

    @component
    def after(model: InputArtifact[Model], out: OutputArtifact[Model]) -> None:
        open(os.path.join(out.uri, "x.txt"), "w").write(open(os.path.join(model.uri, "model.txt")).read())

    m = make()
    s = slow(rows=m.outputs["rows"])
    a = after(model=s.outputs["model"])
    pipeline = Pipeline("resume", os.path.join(HERE, "root"), [m, s, a])
''')


def _conveyor(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_run_killed_mid_node_is_reconciled_and_resumed(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    proc = _conveyor("run", "pipeline.py", cwd=tmp_path)
    _wait_for(tmp_path / "started", proc)
    worker = int((tmp_path / "started").read_text())
    assert worker != proc.pid  # the node runs in a process of its own (the default launcher)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The node's process dies with the run (and the fork server it came from).
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}")

    md = Metadata(str(tmp_path / "root" / "metadata.sqlite"))
    running = [e for e in md.store.get_executions() if e.last_known_state == pb.Execution.RUNNING]
    [stuck] = running
    owner = json.loads(stuck.custom_properties[mdstore.OWNER].string_value)
    assert owner["pid"] == proc.pid and owner["start"]
    partial = tmp_path / "root" / "slow" / "model" / str(stuck.id)
    assert (partial / "partial.txt").exists()

    (tmp_path / "go").write_text("")
    resumed = _conveyor("run", "pipeline.py", cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"execution {stuck.id} was abandoned by a process that died" in out
    md = Metadata(str(tmp_path / "root" / "metadata.sqlite"))
    [e] = md.store.get_executions_by_id([stuck.id])
    assert e.last_known_state == pb.Execution.FAILED
    assert e.custom_properties[mdstore.ERROR].string_value.startswith("abandoned by a process that died")
    assert not partial.exists()
    assert not [x for x in md.store.get_executions() if x.last_known_state == pb.Execution.RUNNING]
    states = dict(line.split()[:2] for line in out.splitlines()
                  if line.startswith("  ") and len(line.split()) > 1 and line.split()[1] in ("CACHED", "COMPLETE"))
    assert states == {"make": "CACHED", "slow": "COMPLETE", "after": "COMPLETE"}, out
    # No LIVE artifact points at partial output.
    for a in md.store.get_artifacts():
        if a.state == pb.Artifact.LIVE and "/slow/" in a.uri:
            assert os.path.exists(os.path.join(a.uri, "model.txt"))


def test_a_running_execution_of_a_live_process_is_left_alone(tmp_path):
    from conveyor.pipeline import driver

    assert driver.owner_alive(driver.owner()) is True
    other_host = json.dumps({"host": "elsewhere.example", "pid": 1, "start": "1"})
    assert driver.owner_alive(other_host) is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = json.dumps({"host": json.loads(driver.owner())["host"], "pid": int(gone.stdout), "start": "1"})
    assert driver.owner_alive(dead) is False
    reused = json.dumps({"host": json.loads(driver.owner())["host"], "pid": os.getpid(), "start": "0"})
    assert driver.owner_alive(reused) is False  # same pid, another process start: the pid was reused


def test_from_reruns_a_node_and_its_downstream(tmp_path):
    rows = make_rows(n=2)
    counter = count_rows(examples=rows.outputs["rows"])
    pipeline = Pipeline("from", str(tmp_path), [rows, counter])
    LocalRunner(echo=lambda _: None).run(pipeline)
    again = LocalRunner(echo=lambda _: None, run_from="make_rows").run(pipeline)
    assert {k: n.state for k, n in again.nodes.items()} == {"make_rows": "COMPLETE", "count_rows": "COMPLETE"}
    assert again.nodes["make_rows"].rerun_reason == ["re-run from 'make_rows' requested"]
    only = LocalRunner(echo=lambda _: None, run_from="count_rows").run(pipeline)
    assert {k: n.state for k, n in only.nodes.items()} == {"make_rows": "CACHED", "count_rows": "COMPLETE"}
    with pytest.raises(KeyError, match="count_rows"):
        LocalRunner(echo=lambda _: None, run_from="count_row").run(pipeline)


@component
def flaky(rows: OutputArtifact[Examples], marker: Parameter[str] = "") -> None:
    # Fails twice, as a lost connection would, then works; `marker` counts the attempts.
    n = int(open(marker).read()) if os.path.exists(marker) else 0
    open(marker, "w").write(str(n + 1))
    if n < 2:
        raise ConnectionError(f"lost the connection (attempt {n + 1})")
    open(os.path.join(rows.uri, "rows.txt"), "w").write("ok")


@component
def bad_input(rows: OutputArtifact[Examples], calls: Parameter[str] = "") -> None:
    # Bad input, not a transient failure; `calls` counts the attempts.
    open(calls, "a").write("x")
    raise ExecutorError("bad_input: the file is empty")


@pytest.mark.parametrize("launcher", ["fork", "thread"])
def test_transient_failures_are_retried_and_recorded(tmp_path, launcher):
    marker = tmp_path / "attempts"
    lines: list[str] = []
    result = LocalRunner(echo=lines.append, launcher=launcher).run(
        Pipeline("retry", str(tmp_path / "root"), [flaky(marker=str(marker), retries=2, retry_backoff_seconds=0.01)])
    )
    assert result.nodes["flaky"].state == "COMPLETE"
    md = Metadata(result.metadata_path)
    [e] = md.store.get_executions_by_id([result.nodes["flaky"].execution_id])
    assert e.custom_properties[mdstore.ATTEMPTS].int_value == 3
    errors = json.loads(e.custom_properties[mdstore.RETRIED_ERRORS].string_value)
    assert len(errors) == 2 and "attempt 1" in errors[0]
    assert sum("retrying in" in line for line in lines) == 2

    calls = tmp_path / "calls"
    failed = LocalRunner(echo=lambda _: None, launcher=launcher).run(
        Pipeline("noretry", str(tmp_path / "root2"),
                 [bad_input(calls=str(calls), retries=3, retry_backoff_seconds=0.01)]),
        raise_on_failure=False,
    )
    assert failed.nodes["bad_input"].state == "FAILED" and calls.read_text() == "x"  # bad input is not retried


def test_unsafe_ids_and_unbound_channels_fail_at_definition(tmp_path):
    for bad in ("../x", "a/b", ".hidden", "x..y", "-x"):
        with pytest.raises(PipelineDefinitionError, match="is not allowed"):
            make_rows(id=bad)
    with pytest.raises(PipelineDefinitionError, match="is not allowed"):
        make_rows().with_id("../escape")
    orphan = count_rows(examples=Channel(Examples))
    with pytest.raises(PipelineDefinitionError, match="no component produces"):
        Pipeline("p", str(tmp_path), [orphan])


def test_code_named_by_import_path_is_in_the_cache_key(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SCALE = 1\n")
    (package / "train.py").write_text("from . import helpers\n\ndef run_fn(fn_args):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    trainer = Trainer(examples=Channel(CsvExampleGen.OUTPUTS["examples"]), run_fn="userpkg.train.run_fn")
    files = trainer.code_files()
    assert files == [str(package / "train.py")]
    params = to_jsonable(trainer.params)
    before = cache.cache_key_parts(trainer, {}, params)
    assert {"code:train.py", "code:helpers.py"} <= set(before)
    (package / "helpers.py").write_text("SCALE = 2\n")
    after = cache.cache_key_parts(trainer, {}, params)
    assert cache.explain_change(before, after) == ["code file helpers.py changed"]


def test_function_component_has_one_type_name_however_launched(tmp_path):
    main = textwrap.dedent('''
        if __name__ == "__main__":
            print("TYPE", s.type_name())
    ''')
    (tmp_path / "pipeline.py").write_text(PIPELINE + main)
    direct = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert direct.returncode == 0, direct.stderr
    from conveyor.cli import load_pipeline

    loaded = load_pipeline(str(tmp_path / "pipeline.py"))
    assert direct.stdout.split("TYPE ")[1].strip() == loaded.component("slow").type_name() == "pipeline.slow"


SECRET = "hunter2-do-not-leak"


def test_secrets_never_reach_mlmd_the_ir_or_the_logs(tmp_path):
    from conveyor.pipeline.compiler import to_json

    seen: dict[str, str] = {}

    @component
    def connect(out: OutputArtifact[Model], db_password: Parameter[str] = "", config: Parameter[dict] = None,
                host: Parameter[str] = "db") -> str:
        seen["password"] = db_password
        seen["token"] = (config or {}).get("apiToken", "")
        open(os.path.join(out.uri, "ok.txt"), "w").write("ok")
        return f"connected to {host}"

    def build(password: str) -> Pipeline:
        node = connect(db_password=password, config={"apiToken": SECRET + "-token", "region": "eu"},
                       beam_pipeline_args=[f"--s3_secret_access_key={SECRET}", "--s3_access_key_id", SECRET])
        return Pipeline("secrets", str(tmp_path / "root"), [node],
                        beam_pipeline_args=[f"--password={SECRET}", "--direct_num_workers=1"])

    lines: list[str] = []
    # In this process (`seen` is this test's): the executor gets the real values.
    result = LocalRunner(echo=lines.append, launcher="thread").run(build(SECRET))
    assert seen == {"password": SECRET, "token": SECRET + "-token"}
    again = LocalRunner(echo=lines.append, launcher="thread").run(build(SECRET + "-rotated"))
    assert again.nodes["connect"].state == "COMPLETE"  # a new secret still invalidates the cache
    reason = again.nodes["connect"].rerun_reason
    assert reason and "db_password" in reason[0]
    ir = to_json(build(SECRET))
    assert '"region": "eu"' in ir and "direct_num_workers=1" in ir
    from tests.lightweight import BeamProbe

    probe = BeamProbe(beam_pipeline_args=[f"--s3_secret_access_key={SECRET}", "--s3_access_key_id", SECRET,
                                          "--direct_running_mode=in_memory"])
    probe_ir = to_json(Pipeline("probe", str(tmp_path / "probe"), [probe]))
    assert "--direct_running_mode=in_memory" in probe_ir and "--s3_access_key_id" in probe_ir
    ir += probe_ir

    md = Metadata(result.metadata_path)
    stored = []
    for e in md.store.get_executions():
        stored += [str(v) for v in e.custom_properties.values()]
    for a in md.store.get_artifacts():
        stored += [str(v) for v in a.custom_properties.values()]
    for where, text in (("MLMD", "\n".join(stored)), ("IR", ir), ("log", "\n".join(lines)),
                        ("re-run reason", "\n".join(reason))):
        assert SECRET not in text, where
    assert "***" in ir


@pytest.mark.parametrize("launcher", ["fork", "thread", "process"])
def test_sigterm_stops_the_running_node_and_cancels_it(tmp_path, launcher):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    proc = _conveyor("run", "pipeline.py", "--launcher", launcher, cwd=tmp_path)
    _wait_for(tmp_path / "started", proc, timeout=300)
    worker = int((tmp_path / "started").read_text())
    assert (worker != proc.pid) == (launcher != "thread")  # a process of its own, or a thread of the run
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15, out
    assert proc.returncode == 130, out
    assert "CANCELED" in out
    # The executor's process is gone: it never finishes the model.
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}")
    (tmp_path / "go").write_text("")
    time.sleep(1)
    md = Metadata(str(tmp_path / "root" / "metadata.sqlite"))
    [slow] = [e for e in md.store.get_executions()
              if e.custom_properties[mdstore.COMPONENT_ID].string_value == "slow"]
    assert slow.last_known_state == pb.Execution.CANCELED
    assert "signal" in slow.custom_properties[mdstore.ERROR].string_value
    assert not (tmp_path / "root" / "slow" / "model" / str(slow.id)).exists()
    assert not [e for e in md.store.get_executions() if e.last_known_state == pb.Execution.RUNNING]


def test_two_runs_at_once_share_the_work_through_the_cache(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    first = _conveyor("run", "pipeline.py", cwd=tmp_path)
    _wait_for(tmp_path / "started", first)
    second = _conveyor("run", "pipeline.py", cwd=tmp_path)
    # The second run waits for the first's `slow` instead of computing it again.
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        line = second.stdout.readline()
        seen.append(line)
        if "waiting: execution" in line or not line:
            break
    assert any("slow" in x and "waiting: execution" in x for x in seen), "".join(seen)
    (tmp_path / "go").write_text("")
    out_first, _ = first.communicate(timeout=300)
    out_second, _ = second.communicate(timeout=300)
    out_second = "".join(seen) + out_second
    assert first.returncode == 0, out_first
    assert second.returncode == 0, out_second
    states = dict(line.split()[:2] for line in out_second.splitlines()
                  if line.startswith("  ") and len(line.split()) > 1 and line.split()[1] in ("CACHED", "COMPLETE"))
    assert states["make"] == "CACHED" and states["slow"] == "CACHED", out_second
    md = Metadata(str(tmp_path / "root" / "metadata.sqlite"))
    slow_runs = [e for e in md.store.get_executions()
                 if e.custom_properties[mdstore.COMPONENT_ID].string_value == "slow"
                 and e.last_known_state == pb.Execution.COMPLETE]
    assert len(slow_runs) == 1  # computed once
    assert len(md.store.get_contexts_by_type("pipeline")) == 1
