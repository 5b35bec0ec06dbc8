"""conveyor.lineage and its commands (runs, show, lineage, diff, why, logs)
on a store TFX 1.16 wrote (two runs of its taxi pipeline; most artifact
files gone) and on a Conveyor store (two short taxi runs, the second with
another number of training steps)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conveyor import LocalRunner, Pipeline, lineage
from conveyor.artifacts import Schema
from conveyor.components import OutputArtifact, Parameter, component
from tests.examples import REPO, example_dir

TFX_STORE = os.path.join(os.path.dirname(REPO), "shared", "data", "tfx_taxi_store")
RUN1, RUN2 = "2026-11-22T09:57:03.313250", "2026-11-22T09:58:38.773475"
TFX_NODES = [
    "CsvExampleGen", "latest_blessed_model_resolver", "StatisticsGen", "SchemaGen", "ExampleValidator",
    "Transform", "Trainer", "Evaluator", "Pusher",
]
TFX_CACHED_IN_RUN2 = {"CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer"}


def conveyor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------
# A store written by TFX
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfx(tmp_path_factory):
    """A copy of the TFX store with its `root/` beside it, as a user copies one."""
    if not os.path.isfile(os.path.join(TFX_STORE, "metadata.sqlite")):
        pytest.fail(f"the TFX store is missing: expected {TFX_STORE}/metadata.sqlite (see its README.md)")
    copy = tmp_path_factory.mktemp("tfx") / "tfx_taxi_store"
    shutil.copytree(TFX_STORE, copy)
    return str(copy)


def test_tfx_runs_have_nine_nodes_each_with_states_and_durations(tfx):
    found = lineage.runs(tfx)
    assert [r.run_id for r in found] == [RUN2, RUN1]
    assert {r.pipeline for r in found} == {"taxi"}
    for r in found:
        assert [n.node for n in r.nodes] == TFX_NODES
        assert r.state == "COMPLETE"
    new, old = found
    assert {n.node for n in new.nodes if n.state == "CACHED"} == TFX_CACHED_IN_RUN2
    assert {n.node: n.state for n in new.nodes if n.state != "CACHED"} == {
        "latest_blessed_model_resolver": "COMPLETE", "Evaluator": "COMPLETE", "Pusher": "COMPLETE"
    }
    assert all(n.state == "COMPLETE" for n in old.nodes)
    # Start and durations come from the executions' MLMD times (ms).
    assert old.seconds == pytest.approx((1795341485072 - 1795341423332) / 1000)
    assert old.node("Transform").seconds == pytest.approx((1795341463951 - 1795341441518) / 1000)
    assert old.node("Transform").execution_id == 6
    assert lineage.runs(tfx, pipeline="taxi", last=1)[0].run_id == RUN2
    assert lineage.runs(tfx, pipeline="other") == []


def test_tfx_run_shortcuts_and_prefixes(tfx):
    assert lineage.run(tfx, "latest").run_id == RUN2
    assert lineage.run(tfx, "previous").run_id == RUN1
    assert lineage.run(tfx, "latest~1").run_id == RUN1
    assert lineage.run(tfx, "2026-11-22T09:57").run_id == RUN1
    with pytest.raises(lineage.LineageNotFoundError, match="ambiguous"):
        lineage.run(tfx, "2026-11-22")
    with pytest.raises(lineage.LineageNotFoundError, match="has 2 run"):
        lineage.run(tfx, "latest~2")
    with pytest.raises(lineage.LineageNotFoundError, match="no run 'nope'"):
        lineage.run(tfx, "nope")


def test_tfx_served_model_provenance_reaches_the_csv_example_gen(tfx):
    served = lineage.served_model(tfx)
    assert (served.id, served.type) == (20, "PushedModel")
    # blessed / pushed are custom properties in a TFX store.
    assert served.properties["pushed"] == 1
    assert served.properties["pushed_destination"] == "/pipelines/tfx_taxi/serving/1795341529"
    assert (served.files, served.local_path) == ("gone", None)

    graph = lineage.provenance(tfx, served)
    assert sorted(graph.artifacts) == [1, 2, 3, 7, 12, 13, 18, 20]
    # Each artifact's producer, not the cached executions of run 2 that re-linked it.
    assert sorted(graph.executions) == [1, 3, 4, 6, 7, 17, 18]
    [source] = graph.sources()
    assert (source.node, source.id, source.run_id) == ("CsvExampleGen", 1, RUN1)
    assert source.parameters["input_base"] == "/pipelines/tfx_taxi/data"
    assert source.fingerprints == {"input_fingerprint": (
        "split:single_split,num_files:1,total_bytes:1922812,xor_checksum:1795341195,sum_checksum:1795341195")}
    trainer = graph.executions[7]
    assert trainer.code == {"taxi_utils_native_keras": (
        "2ecbc6400ab70977b7082bb6f4e224c04a61f80d3893574442d7ab97b7360fe6")}
    assert json.loads(trainer.parameters["train_args"]) == {"num_steps": 1000}
    assert graph.executions[17].inputs == {"model": [13], "baseline_model": [13], "examples": [1]}
    # Files: the copied root holds the examples; the model's files are gone.
    examples = graph.artifacts[1]
    assert examples.uri == "/pipelines/tfx_taxi/root/CsvExampleGen/examples/1"
    assert (examples.files, examples.local_path) == ("present", os.path.join(tfx, "root/CsvExampleGen/examples/1"))
    assert graph.artifacts[13].files == "gone"
    text = lineage.format_provenance(graph)
    assert text.splitlines()[0] == "PushedModel #20  /pipelines/tfx_taxi/root/Pusher/pushed_model/18  [files gone]"
    assert "<- CsvExampleGen (CsvExampleGen), execution #1, COMPLETE" in text
    assert "input_base = /pipelines/tfx_taxi/data" in text


def test_tfx_served_model_found_from_a_served_path(tfx):
    assert lineage.served_model(tfx, "/pipelines/tfx_taxi/serving/1795341485/saved_model.pb").id == 17
    assert lineage.served_model(tfx, "/pipelines/tfx_taxi/serving/1795341529").id == 20
    # A copy of a served version elsewhere: found by its version folder.
    assert lineage.served_model(tfx, "/srv/models/taxi/1795341529/variables").id == 20
    assert lineage.artifact(tfx, "/pipelines/tfx_taxi/serving/1795341485").id == 17
    with pytest.raises(lineage.LineageNotFoundError, match="no pushed model"):
        lineage.served_model(tfx, "/srv/models/taxi/42")


def test_tfx_artifacts_by_uri_copy_path_and_consumers(tfx):
    assert lineage.artifact(tfx, "/pipelines/tfx_taxi/root/Trainer/model/7").id == 13
    assert lineage.artifact(tfx, os.path.join(tfx, "root", "Evaluator", "blessing", "8")).id == 15
    assert lineage.producer(tfx, 13).id == 7
    assert [e.id for e in lineage.consumers(tfx, 13)] == [8, 9, 17, 18]
    down = lineage.provenance(tfx, 13, "down")
    assert sorted(down.executions) == [8, 9, 17, 18]
    assert sorted(down.artifacts) == [13, 15, 16, 17, 18, 19, 20]
    with pytest.raises(lineage.LineageNotFoundError, match="no artifact #999"):
        lineage.artifact(tfx, 999)


def test_tfx_why_says_which_nodes_came_from_the_cache(tfx):
    answers = {node: lineage.why(tfx, RUN2, node) for node in TFX_NODES}
    assert {n for n, x in answers.items() if x.cached} == TFX_CACHED_IN_RUN2
    trainer = answers["Trainer"]
    assert (trainer.execution_id, trainer.previous_execution, trainer.previous_run) == (16, 7, RUN1)
    assert trainer.reasons[0].startswith("from the cache: its cache key matched execution #7")
    # TFX keeps the key as the name of an execution_cache context.
    assert trainer.cache_key == "a72e638a28b819ebae551677d2c67cd19c1392e5e0e7aa70b8d51cf900df31f0"
    assert answers["Evaluator"].changes == ["input 'baseline_model' added"]
    assert answers["Pusher"].changes == ["input 'model_blessing' changed (artifacts 15 -> 18)"]
    assert answers["Pusher"].previous_execution == 9
    assert "resolver" in answers["latest_blessed_model_resolver"].reasons[0]
    first = lineage.why(tfx, RUN1, "Trainer")
    assert (first.cached, first.previous_execution) == (False, None)
    assert "first execution of this node" in first.reasons[0]
    with pytest.raises(lineage.LineageNotFoundError, match="no execution of node 'trainer'"):
        lineage.why(tfx, RUN2, "trainer")


def test_tfx_diff_of_the_two_runs(tfx):
    d = lineage.diff(tfx, RUN1, RUN2)
    assert [n.node for n in d.nodes] == TFX_NODES
    assert {n.node for n in d.nodes if n.reran} == {"latest_blessed_model_resolver", "Evaluator", "Pusher"}
    assert d.node("Evaluator").changes == ["input 'baseline_model' added"]
    assert d.node("Pusher").changes == ["input 'model_blessing' changed (artifacts 15 -> 18)"]
    # Cached nodes reused run 1's outputs: nothing differs, though TFX recorded less on them.
    for node in TFX_CACHED_IN_RUN2:
        n = d.node(node)
        assert (n.outputs_same, n.changes, n.parameters, n.fingerprints) == (True, [], {}, {}), node
    # Both evaluations' files are in the copied root: the same model, the same metrics.
    assert d.metrics == {"Evaluator.evaluation": {}}
    assert d.schema == {} and d.notes == []
    text = lineage.format_diff(d)
    assert "Evaluator                      COMPLETE  COMPLETE  re-ran: input 'baseline_model' added" in text


def test_tfx_logs_say_none_was_recorded(tfx):
    record = lineage.logs(tfx, "latest", "Trainer")
    assert (record.execution_id, record.path, record.local_path) == (16, None, None)
    assert record.message.startswith("no log was recorded for node 'Trainer' in run " + RUN2)


def test_tfx_store_is_only_read(tfx):
    before = _digest(os.path.join(tfx, "metadata.sqlite"))
    lineage.runs(tfx)
    lineage.diff(tfx, "previous", "latest")
    lineage.provenance(tfx, lineage.served_model(tfx))
    assert _digest(os.path.join(tfx, "metadata.sqlite")) == before
    with pytest.raises(lineage.LineageNotFoundError, match="no metadata store at"):
        lineage.open_store(os.path.join(tfx, "missing.sqlite"))


def test_cli_on_the_tfx_store(tfx):
    out = conveyor("runs", "--store", tfx, "--json")
    assert out.returncode == 0, out.stderr
    assert [(r["run_id"], len(r["nodes"])) for r in json.loads(out.stdout)] == [(RUN2, 9), (RUN1, 9)]

    out = conveyor("why", "--store", tfx, "latest", "Trainer")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"Trainer in run {RUN2}: CACHED (execution #16)"

    out = conveyor("lineage", "--store", os.path.join(tfx, "metadata.sqlite"), "--format", "dot")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("digraph lineage {")
    assert "  e1 -> a1 [label=\"examples\"];" in out.stdout

    out = conveyor("lineage", "--store", tfx, "13", "--down", "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["executions"]) == ["17", "18", "8", "9"]

    out = conveyor("show", "--store", tfx, "previous")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"run {RUN1}  pipeline taxi  COMPLETE")
    assert "    Trainer.model: Model #13  /pipelines/tfx_taxi/root/Trainer/model/7  [files gone]" in out.stdout

    out = conveyor("show", "--store", tfx, "13", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["artifact"]["files"], shown["producer"]["id"], len(shown["consumers"])) == ("gone", 7, 4)

    out = conveyor("diff", "--store", tfx, "previous", "latest", "--json")
    assert out.returncode == 0, out.stderr
    assert [n["node"] for n in json.loads(out.stdout)["nodes"] if n["reran"]] == [
        "latest_blessed_model_resolver", "Evaluator", "Pusher"]


def test_cli_exit_codes(tfx):
    assert conveyor("why", "--store", tfx, "latest", "Nope").returncode == 1
    assert conveyor("show", "--store", tfx, "no-such-run").returncode == 1
    assert conveyor("runs", "--store", os.path.join(tfx, "nothing-here.sqlite")).returncode == 1
    logs = conveyor("logs", "--store", tfx, "latest", "Trainer")
    assert logs.returncode == 1 and "no log was recorded" in logs.stderr
    usage = conveyor("diff", "--store", tfx, "latest")
    assert usage.returncode == 2 and "expected two runs" in usage.stderr
    no_store = conveyor("runs")
    assert no_store.returncode == 2 and "--store" in no_store.stderr
    assert conveyor("lineage", "--store", tfx, "--up", "--down").returncode == 2


# ---------------------------------------------------------------------------
# A Conveyor store: two short taxi runs, the second with more training steps
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taxi(taxi_runs):
    """The session's two short taxi runs (tests/conftest.py), shared with the UI tests."""
    return taxi_runs


TAXI_NODES = {
    "csv_example_gen", "analyzer_cache", "statistics_gen", "schema_gen", "example_validator", "transform",
    "trainer", "latest_blessed_model_resolver", "evaluator", "pusher",
}
UPSTREAM_OF_TRAINER = {"csv_example_gen", "statistics_gen", "schema_gen", "example_validator", "transform"}


def test_conveyor_runs_and_nodes(taxi):
    found = lineage.runs(taxi["store"])
    assert [r.run_id for r in found] == ["r2", "r1"]
    r2, r1 = found
    assert {n.node for n in r1.nodes} == {n.node for n in r2.nodes} == TAXI_NODES
    assert {n.node: n.execution_id for n in r1.nodes} == {k: v.execution_id for k, v in taxi["r1"].nodes.items()}
    assert {n.node: n.state for n in r2.nodes} == {k: v.state for k, v in taxi["r2"].nodes.items()}
    assert {n.node for n in r2.nodes if n.state == "CACHED"} == UPSTREAM_OF_TRAINER
    assert r2.node("trainer").rerun_reason.startswith("parameter 'train_args' changed")


def test_conveyor_why_and_diff_name_the_changed_parameter(taxi):
    store = lineage.open_store(taxi["store"])
    trainer = lineage.why(store, "r2", "trainer")
    change = ("parameter 'train_args' changed ({\"num_steps\": 20, \"splits\": [\"train\"]} -> "
              "{\"num_steps\": 30, \"splits\": [\"train\"]})")
    assert (trainer.cached, trainer.changes) == (False, [change])
    assert trainer.previous_execution == taxi["r1"].nodes["trainer"].execution_id
    assert trainer.recorded_reason == change
    transform = lineage.why(store, "latest", "transform")
    assert transform.cached and transform.previous_execution == taxi["r1"].nodes["transform"].execution_id
    old_model = taxi["r1"].outputs("trainer", "model")[0].id
    new_model = taxi["r2"].outputs("trainer", "model")[0].id
    evaluator = lineage.why(store, "r2", "evaluator")
    assert f"input 'model' changed (artifacts {old_model} -> {new_model})" in evaluator.changes

    d = lineage.diff(store, "previous", "latest")
    assert (d.run_a, d.run_b) == ("r1", "r2")
    reran = {n.node for n in d.nodes if n.reran}
    assert reran == TAXI_NODES - UPSTREAM_OF_TRAINER
    assert d.node("trainer").changes == [change]
    assert d.node("trainer").parameters == {"train_args": (
        '{"num_steps": 20, "splits": ["train"]}', '{"num_steps": 30, "splits": ["train"]}')}
    assert d.node("csv_example_gen").outputs_same and d.node("csv_example_gen").changes == []
    # Another model: its evaluation's loss differs; the example count does not.
    changed = d.metrics["evaluator.evaluation"]
    assert "loss" in changed and "example_count" not in changed
    a, b = changed["loss"]
    assert a is not None and b is not None and a != b
    assert d.schema == {} and d.notes == []


def test_conveyor_served_model_provenance(taxi):
    store = lineage.open_store(taxi["store"])
    pushed = [a for r in ("r2", "r1") for a in taxi[r].outputs("pusher", "pushed_model") if a.get("pushed") == 1]
    served = lineage.served_model(store)
    assert served.id == pushed[0].id
    destination = served.properties["pushed_destination"]
    assert lineage.served_model(store, os.path.join(destination, "saved_model.pb")).id == served.id
    graph = lineage.provenance(store, served.id)
    [source] = graph.sources()
    assert source.node == "csv_example_gen" and source.run_id == "r1"
    assert source.parameters["input_base"] == os.path.join(example_dir("taxi"), "data")
    assert list(source.fingerprints) == ["single_split"]
    trainer = next(e for e in graph.executions.values() if e.node == "trainer")
    assert list(trainer.code) == ["taxi_utils.py"]
    assert all(a.files == "present" for a in graph.artifacts.values())


def test_conveyor_logs_name_the_execution(taxi):
    record = lineage.logs(taxi["store"], "r2", "trainer")
    assert record.execution_id == taxi["r2"].nodes["trainer"].execution_id
    assert record.path == taxi["r2"].nodes["trainer"].log_path == os.path.join(
        taxi["root"], "_logs", "r2", f"trainer-{record.execution_id}.log")
    assert record.local_path == record.path and record.message == ""
    with open(record.local_path) as f:
        assert " - loss: " in f.read()  # Keras' training output
    cached = lineage.logs(taxi["store"], "r2", "csv_example_gen")
    assert cached.path is None and "it was CACHED, so nothing ran" in cached.message


def test_cli_on_the_conveyor_store(taxi):
    out = conveyor("why", "--store", taxi["store"], "r2", "trainer")
    assert out.returncode == 0, out.stderr
    assert "parameter 'train_args' changed" in out.stdout
    out = conveyor("diff", "--store", os.path.dirname(taxi["store"]), "r1", "r2")
    assert out.returncode == 0, out.stderr
    assert "metrics evaluator.evaluation:" in out.stdout and "  loss: " in out.stdout


# ---------------------------------------------------------------------------
# Schema differences between two runs
# ---------------------------------------------------------------------------


@component
def write_schema(schema: OutputArtifact[Schema], features: Parameter[str] = "a") -> None:
    with open(os.path.join(schema.uri, "schema.pbtxt"), "w") as f:
        f.write("".join(f'feature {{ name: "{n}" type: INT }}\n' for n in features.split(",")))


def test_diff_shows_schema_changes(tmp_path):
    root = str(tmp_path / "root")
    for run_id, features in (("s1", "a,b"), ("s2", "a,c")):
        LocalRunner(echo=lambda _: None).run(
            Pipeline("schemas", root, [write_schema(features=features)]), run_id=run_id)
    d = lineage.diff(os.path.join(root, "metadata.sqlite"), "s1", "s2")
    assert d.node("write_schema").parameters == {"features": ("a,b", "a,c")}
    assert list(d.schema) == ["write_schema.schema"]
    changes = d.schema["write_schema.schema"]
    assert [c.split(":")[0] for c in changes] == ["b", "c"]
    assert changes[0] == "b: removed (INT)"
