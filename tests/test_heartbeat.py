"""Executions owned on another host: a run cannot look for their process, so
it reads their heartbeat. One whose owner sent none for longer than the
staleness limit (a crashed machine sharing the store) is reconciled FAILED
with why and its node runs again; one still beating is left alone (a
concurrent run waits for it, until its beats stop); a running pipeline
refreshes the heartbeats of its executions while they run."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner, Pipeline
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import driver
from conveyor.pipeline.dsl import to_jsonable
from tests.lightweight import count_rows, make_rows, wait_for_release

OTHER_HOST = "crashed-host.example"


def _quiet(line: str) -> None:
    pass


class _Lines:
    """An echo that keeps the run's console lines (it is called from the scheduling thread)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def _left_running(tmp_path, heartbeat_age: float) -> tuple[Pipeline, Metadata, int]:
    """A pipeline make_rows -> count_rows whose make_rows ran, and an
    execution of count_rows left RUNNING by a run on another host (its owner
    recorded as there), its last heartbeat `heartbeat_age` s old, with the
    cache key the pipeline's next run computes for the node (so a concurrent
    run waits for it) and half an output. The pipeline, its store, the id."""
    root = str(tmp_path / "root")
    rows = make_rows(n=2)
    counter = count_rows(examples=rows.outputs["rows"])
    first = LocalRunner(echo=_quiet).run(Pipeline("heartbeat", root, [rows]))
    md = Metadata(first.metadata_path)
    inputs = {"examples": first.outputs("make_rows", "rows")}
    params = to_jsonable(counter.params)
    key, _ = driver.cache_key(counter, inputs, params)
    properties = driver.execution_properties(counter, params)
    properties[mdstore.OWNER] = json.dumps({"host": OTHER_HOST, "pid": 4242, "start": "1"})
    properties[mdstore.CACHE_KEY] = key
    properties[mdstore.HEARTBEAT] = time.time() - heartbeat_age
    contexts = [md.context("pipeline", "heartbeat"),
                md.context("pipeline_run", "run-on-the-other-host", pipeline_name="heartbeat"),
                md.context("node", "heartbeat.count_rows", pipeline_name="heartbeat")]
    execution_id = md.start_execution(driver.component_type_name(counter), contexts, inputs, properties)
    partial = tmp_path / "root" / "count_rows" / "model" / str(execution_id)
    partial.mkdir(parents=True)
    (partial / "count.txt").write_text("hal")
    return Pipeline("heartbeat", root, [rows, counter]), md, execution_id


def _run_in_thread(runner: LocalRunner, pipeline: Pipeline) -> tuple[threading.Thread, list]:
    # In a thread, so a run that waits for ever fails the test instead of hanging it.
    results: list = []
    thread = threading.Thread(target=lambda: results.append(runner.run(pipeline)), daemon=True)
    thread.start()
    return thread, results


def test_an_execution_of_another_host_without_heartbeat_is_reconciled_and_its_node_runs_again(tmp_path):
    pipeline, md, stuck = _left_running(tmp_path, heartbeat_age=3600)
    lines = _Lines()
    thread, results = _run_in_thread(LocalRunner(echo=lines), pipeline)
    thread.join(timeout=120)
    assert not thread.is_alive(), f"the run still waits for the abandoned execution:\n{lines.text()}"
    [result] = results
    [e] = md.store.get_executions_by_id([stuck])
    assert e.last_known_state == pb.Execution.FAILED
    error = e.custom_properties[mdstore.ERROR].string_value
    assert re.match(rf"abandoned: its owner on host {OTHER_HOST} \(pid 4242\) sent no heartbeat for 360[01] s "
                    rf"\(limit 600 s", error), error
    assert re.search(rf"count_rows +execution {stuck} was abandoned: its owner on host {OTHER_HOST} .*sent no "
                     rf"heartbeat for 360[01] s.*: marked FAILED", lines.text()), lines.text()
    assert not (tmp_path / "root" / "count_rows" / "model" / str(stuck)).exists()
    assert result.nodes["make_rows"].state == "CACHED"
    assert result.nodes["count_rows"].state == "COMPLETE" and result.nodes["count_rows"].execution_id != stuck
    [model] = result.outputs("count_rows", "model")
    assert open(os.path.join(model.uri, "count.txt")).read() == "2"


def test_an_execution_of_another_host_still_beating_is_left_alone_until_its_beats_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "HEARTBEAT_SECONDS", 0.5)
    pipeline, md, stuck = _left_running(tmp_path, heartbeat_age=0)
    pipeline_ctx = md.context("pipeline", "heartbeat")
    assert driver.reconcile(md, pipeline, pipeline_ctx, _quiet, stale_after=2) == []
    assert driver.abandoned(md.execution(stuck), stale_after=2) is None

    lines = _Lines()
    thread, results = _run_in_thread(LocalRunner(echo=lines, stale_after=2), pipeline)
    # The other host keeps beating: the run neither reconciles its execution nor computes the node.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        md.heartbeat([stuck], time.time())
        time.sleep(0.25)
        assert thread.is_alive(), lines.text()
    assert md.execution(stuck).last_known_state == pb.Execution.RUNNING
    assert re.search(rf"count_rows +waiting: execution {stuck} of another run \(pid 4242 on {OTHER_HOST}\)",
                     lines.text()), lines.text()
    assert "abandoned" not in lines.text() and not re.search(r"count_rows +running", lines.text())
    # Its beats stop (the machine crashed): after the limit the run stops waiting and computes it.
    thread.join(timeout=60)
    assert not thread.is_alive(), lines.text()
    [result] = results
    assert result.nodes["count_rows"].state == "COMPLETE", lines.text()
    # The next run marks it FAILED, saying why.
    again = LocalRunner(echo=_quiet, stale_after=2).run(pipeline)
    assert again.nodes["count_rows"].state == "CACHED"
    e = md.execution(stuck)
    assert e.last_known_state == pb.Execution.FAILED
    assert e.custom_properties[mdstore.ERROR].string_value.startswith(
        f"abandoned: its owner on host {OTHER_HOST} (pid 4242) sent no heartbeat for ")


def test_a_running_pipeline_refreshes_the_heartbeat_of_its_executions(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "HEARTBEAT_SECONDS", 0.2)
    gate = str(tmp_path / "gate")
    pipeline = Pipeline("beating", str(tmp_path / "root"), [wait_for_release(gate=gate)])
    thread, results = _run_in_thread(LocalRunner(echo=_quiet), pipeline)
    md = None
    beats: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while len(set(beats)) < 4 and time.monotonic() < deadline:
            if md is None and os.path.exists(pipeline.metadata):
                md = Metadata(pipeline.metadata)
            running = [e for e in md.store.get_executions() if e.last_known_state == pb.Execution.RUNNING] if md else []
            if running and mdstore.HEARTBEAT in running[0].custom_properties:
                beats.append(running[0].custom_properties[mdstore.HEARTBEAT].double_value)
            time.sleep(0.05)
    finally:
        open(gate, "w").close()
        thread.join(timeout=60)
    distinct = sorted(set(beats))
    assert len(distinct) >= 4, beats
    assert distinct == sorted(dict.fromkeys(beats)), beats  # each newer than the last
    assert all(b2 - b1 < 5 for b1, b2 in zip(distinct, distinct[1:], strict=False)), distinct
    [result] = results
    [e] = md.store.get_executions_by_id([result.nodes["wait_for_release"].execution_id])
    assert e.last_known_state == pb.Execution.COMPLETE
    assert abs(e.custom_properties[mdstore.HEARTBEAT].double_value - time.time()) < 30
    # The beats end with the run: no thread is left, the execution is left as it was.
    last = e.custom_properties[mdstore.HEARTBEAT].double_value
    time.sleep(0.6)
    assert md.execution(e.id).custom_properties[mdstore.HEARTBEAT].double_value == last
    assert not [t for t in threading.enumerate() if t.name == "conveyor-heartbeat"]


def test_the_staleness_limit_is_a_keyword_or_an_environment_variable(monkeypatch):
    monkeypatch.delenv(driver.STALE_AFTER_ENV, raising=False)
    assert LocalRunner().stale_after == driver.STALE_AFTER_SECONDS == 600
    monkeypatch.setenv(driver.STALE_AFTER_ENV, "120")
    assert LocalRunner().stale_after == 120
    assert LocalRunner(stale_after=90).stale_after == 90  # the keyword wins
    monkeypatch.setenv(driver.STALE_AFTER_ENV, "ten minutes")
    with pytest.raises(ValueError, match="CONVEYOR_STALE_AFTER='ten minutes' is not a number of seconds"):
        LocalRunner()
    with pytest.raises(ValueError, match=r"stale_after=5: .* give at least 60"):
        LocalRunner(stale_after=5)


def test_an_execution_another_run_took_for_abandoned_is_not_published_when_it_ends(tmp_path):
    # A run whose host was paused past the limit: meanwhile another run marked its
    # execution FAILED (abandoned). When its node then ends, nothing is published over that.
    gate = str(tmp_path / "gate")
    pipeline = Pipeline("paused", str(tmp_path / "root"), [wait_for_release(gate=gate)])
    lines = _Lines()
    results: list = []
    thread = threading.Thread(target=lambda: results.append(
        LocalRunner(echo=lines).run(pipeline, raise_on_failure=False)), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".started") and time.monotonic() < deadline:
            time.sleep(0.05)
        md = Metadata(pipeline.metadata)
        [e] = [x for x in md.store.get_executions() if x.last_known_state == pb.Execution.RUNNING]
        abandoned = "abandoned: its owner on host elsewhere sent no heartbeat for 900 s"
        md.finish_execution(e.id, md.contexts_of(e.id), {}, state="FAILED", properties={mdstore.ERROR: abandoned})
    finally:
        open(gate, "w").close()
        thread.join(timeout=60)
    [result] = results
    node = result.nodes["wait_for_release"]
    assert node.state == "FAILED" and "set by another run while it ran" in node.error, lines.text()
    assert "FAILED" in lines.text() and "discarded" in lines.text()
    md = Metadata(pipeline.metadata)
    [e] = md.store.get_executions_by_id([e.id])
    assert e.last_known_state == pb.Execution.FAILED
    assert e.custom_properties[mdstore.ERROR].string_value == abandoned  # the other run's word stands
    assert md.store.get_artifacts() == []  # nothing published
    assert not list((tmp_path / "root" / "wait_for_release").rglob("rows.txt"))
