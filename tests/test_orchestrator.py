"""The local orchestrator on a real SQLite MLMD store, with light components."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner, Pipeline, RunFailedError
from conveyor.metadata.store import ERROR, Metadata
from tests.lightweight import BeamProbe, count_rows, explode, make_rows, meet


def _pipeline(root, n=3, extra=()):
    rows = make_rows(n=n)
    counter = count_rows(examples=rows.outputs["rows"])
    return Pipeline("light", str(root), [rows, counter, *extra])


def _quiet():
    return LocalRunner(echo=lambda line: None)


def test_run_records_executions_contexts_and_events(tmp_path):
    result = _quiet().run(_pipeline(tmp_path))
    assert {n.state for n in result.nodes.values()} == {"COMPLETE"}
    model = result.outputs("count_rows", "model")[0]
    execution_id = result.nodes["count_rows"].execution_id
    # Outputs live at <root>/<node>/<output_key>/<execution_id>/.
    assert model.uri == os.path.join(str(tmp_path), "count_rows", "model", str(execution_id))
    assert open(os.path.join(model.uri, "count.txt")).read() == "3"

    md = Metadata(os.path.join(str(tmp_path), "metadata.sqlite"))
    store = md.store
    assert {t.name for t in store.get_context_types()} >= {"pipeline", "pipeline_run", "node"}
    [e] = store.get_executions_by_id([execution_id])
    assert e.last_known_state == pb.Execution.COMPLETE
    events = store.get_events_by_execution_ids([execution_id])
    kinds = sorted((ev.type, ev.path.steps[0].key) for ev in events)
    assert kinds == [(pb.Event.INPUT, "examples"), (pb.Event.OUTPUT, "model")]
    [art] = store.get_artifacts_by_id([model.id])
    assert art.state == pb.Artifact.LIVE
    contexts = {c.name for c in store.get_contexts_by_execution(execution_id)}
    assert {"light", "light.count_rows", result.run_id} <= contexts
    # Parameters are recorded on the execution.
    [producer] = store.get_executions_by_id([result.nodes["make_rows"].execution_id])
    assert producer.custom_properties["n"].int_value == 3


def test_second_run_is_fully_cached_and_reuses_artifacts(tmp_path):
    first = _quiet().run(_pipeline(tmp_path))
    second = _quiet().run(_pipeline(tmp_path))
    assert {n.state for n in second.nodes.values()} == {"CACHED"}
    assert second.outputs("count_rows", "model")[0].id == first.outputs("count_rows", "model")[0].id
    md = Metadata(os.path.join(str(tmp_path), "metadata.sqlite"))
    [e] = md.store.get_executions_by_id([second.nodes["count_rows"].execution_id])
    assert e.last_known_state == pb.Execution.CACHED


def test_changed_parameter_reruns_node_and_downstream_and_says_why(tmp_path):
    _quiet().run(_pipeline(tmp_path))
    lines = []
    result = LocalRunner(echo=lines.append).run(_pipeline(tmp_path, n=5))
    assert result.nodes["make_rows"].state == "COMPLETE"
    assert result.nodes["count_rows"].state == "COMPLETE"
    assert result.nodes["make_rows"].rerun_reason == ["parameter 'n' changed (3 -> 5)"]
    assert "input 'examples' changed" in result.nodes["count_rows"].rerun_reason[0]
    assert any("re-run: parameter 'n' changed" in line for line in lines)


def test_no_cache_and_per_component_enable_cache(tmp_path):
    _quiet().run(_pipeline(tmp_path))
    result = LocalRunner(enable_cache=False, echo=lambda line: None).run(_pipeline(tmp_path))
    assert {n.state for n in result.nodes.values()} == {"COMPLETE"}
    rows = make_rows(n=3)
    counter = count_rows(examples=rows.outputs["rows"], enable_cache=False)
    result = _quiet().run(Pipeline("light", str(tmp_path), [rows, counter]))
    assert result.nodes["make_rows"].state == "CACHED"
    assert result.nodes["count_rows"].state == "COMPLETE"


def test_independent_nodes_run_concurrently(tmp_path):
    rows = make_rows()
    # Each waits for the other in one folder: run one after the other, the first times out.
    place = tmp_path / "meet"
    place.mkdir()
    a = meet(examples=rows.outputs["rows"], id="meet_a", tag="a", place=str(place))
    b = meet(examples=rows.outputs["rows"], id="meet_b", tag="b", place=str(place))
    result = _quiet().run(Pipeline("light", str(tmp_path / "root"), [rows, a, b]))
    assert result.nodes["meet_a"].state == result.nodes["meet_b"].state == "COMPLETE"


def test_failure_is_recorded_nothing_published_nothing_downstream(tmp_path):
    rows = make_rows()
    bad = explode(examples=rows.outputs["rows"])
    pipeline = Pipeline("light", str(tmp_path), [rows, bad])
    with pytest.raises(RunFailedError) as e:
        _quiet().run(pipeline)
    assert e.value.component_id == "explode"
    assert "bad rows in the input" in str(e.value)
    md = Metadata(os.path.join(str(tmp_path), "metadata.sqlite"))
    [ex] = md.store.get_executions_by_id([e.value.execution_id])
    assert ex.last_known_state == pb.Execution.FAILED
    assert "bad rows in the input" in ex.custom_properties[ERROR].string_value
    # The half-written output is gone and was never registered.
    assert not os.path.exists(os.path.join(str(tmp_path), "explode", "model", str(e.value.execution_id)))
    events = md.store.get_events_by_execution_ids([e.value.execution_id])
    assert [ev for ev in events if ev.type == pb.Event.OUTPUT] == []


def test_downstream_of_failure_is_skipped(tmp_path):
    rows = make_rows()
    bad = explode(examples=rows.outputs["rows"])
    from conveyor.artifacts import Examples
    from conveyor.pipeline.dsl import Channel

    # A node wired to the failing node's output.
    after = count_rows(examples=Channel(Examples, bad, "model"), id="after_bad")
    result = _quiet().run(Pipeline("light", str(tmp_path), [rows, bad, after]), raise_on_failure=False)
    assert result.nodes["explode"].state == "FAILED"
    assert result.nodes["after_bad"].state == "SKIPPED"
    assert result.nodes["after_bad"].execution_id is None


def test_beam_args_per_pipeline_and_per_component_component_wins(tmp_path):
    pipeline_args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    plain = BeamProbe(id="plain")
    own = BeamProbe(id="own", beam_pipeline_args=["--direct_num_workers=3", "--some_runner_flag=kept"])
    light = make_rows()  # not a Beam component: gets no Beam args
    result = _quiet().run(Pipeline("beam", str(tmp_path), [plain, own, light], beam_pipeline_args=pipeline_args))

    def options(node):
        return open(os.path.join(result.outputs(node, "model")[0].uri, "options.txt")).read()

    assert options("plain") == "multi_processing 2"
    assert options("own") == "multi_processing 3"
    md = Metadata(result.metadata_path)
    [e] = md.store.get_executions_by_id([result.nodes["own"].execution_id])
    assert e.last_known_state == pb.Execution.COMPLETE
    # Unknown flags pass through to the runner untouched.
    lines = []
    LocalRunner(echo=lines.append, enable_cache=False).run(
        Pipeline("beam", str(tmp_path), [BeamProbe(id="own", beam_pipeline_args=["--some_runner_flag=kept"])])
    )
    assert any("--some_runner_flag=kept" in line for line in lines)


def test_interrupted_run_stops_its_running_node_and_leaves_no_execution_running(tmp_path):
    from tests.lightweight import wait_for_release

    gate = str(tmp_path / "gate")

    def ctrl_c_once_running() -> None:
        # Ctrl-C once the executor really runs (it said so), not before it started.
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".started") and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    node = wait_for_release(gate=gate)
    threading.Thread(target=ctrl_c_once_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        LocalRunner(echo=lambda line: None).run(Pipeline("stop", str(tmp_path), [node]))
    assert os.path.exists(gate + ".started")
    # Released now, a node still running would say so: it was stopped.
    open(gate, "w").close()
    time.sleep(1.5)
    assert not os.path.exists(gate + ".released")
    md = Metadata(os.path.join(str(tmp_path), "metadata.sqlite"))
    [e] = md.store.get_executions()
    assert e.last_known_state == pb.Execution.CANCELED
    assert "KeyboardInterrupt" in e.custom_properties[ERROR].string_value


def test_a_swallowed_ctrl_c_still_stops_the_run():
    # A KeyboardInterrupt raised inside a finalizer is printed and dropped by
    # Python; the run's loop must still see that Ctrl-C was pressed.
    from conveyor.pipeline.runner import _CtrlC

    ctrl_c = _CtrlC()
    try:
        ctrl_c.check()  # nothing pressed yet
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as a finalizer would
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
