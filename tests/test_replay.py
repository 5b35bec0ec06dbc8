"""conveyor.replay: one node of a recorded run run again in this process, on
the inputs recorded for it, into a scratch directory, publishing nothing.
On real stores (two short taxi runs; a TFX store) and real executors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import runpy
import shutil
import textwrap
import traceback
import types

import pytest

from conveyor import LocalRunner, Pipeline, lineage
from conveyor.artifacts import Model
from conveyor.pipeline.dsl import Component
from conveyor.replay import ReplayError, replay
from tests import lightweight
from tests.examples import REPO

TFX_STORE = os.path.join(os.path.dirname(REPO), "shared", "data", "tfx_taxi_store")


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _files(root: str) -> dict[str, float]:
    """Every file under `root` with its modification time."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[path] = os.stat(path).st_mtime
    return found


def _cli(*argv: str) -> int:
    """`conveyor replay ...`, through the command line's own entry point."""
    from conveyor.cli import main

    return main(["replay", *argv])


# ---------------------------------------------------------------------------
# A real taxi run
# ---------------------------------------------------------------------------


def test_the_runner_records_what_replay_runs(taxi_runs):
    store = lineage.open_store(taxi_runs["store"])
    node = lineage.run(store, "r1").node("trainer")
    [e] = store.mlmd.get_executions_by_id([node.execution_id])
    assert store.value(e, "__component_class__") == "conveyor.components.trainer:Trainer"
    assert store.value(e, "__executor__") == "conveyor.components.trainer:run"
    assert store.value(e, "__code_file__").endswith(os.path.join("conveyor", "components", "trainer.py"))
    # Conveyor's bookkeeping, not parameters.
    assert "__component_class__" not in lineage.execution(store, node.execution_id).parameters


def test_replay_schema_gen_and_statistics_gen_remake_the_recorded_outputs_and_publish_nothing(taxi_runs, tmp_path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    store_path, root = taxi_runs["store"], taxi_runs["root"]
    before, files_before = _digest(store_path), _files(root)
    recorded = {a.type: a for a in lineage.artifacts(
        store_path, [i for n in lineage.run(store_path, "r1").nodes for ids in n.outputs.values() for i in ids])}

    schema = replay(store_path, "r1", "schema_gen", scratch_dir=str(tmp_path / "s"))
    assert schema.succeeded, schema.result.error
    [out] = schema.outputs["schema"]
    assert out.uri == str(tmp_path / "s" / "schema_gen" / "schema" / str(schema.execution_id))
    with open(os.path.join(out.uri, "schema.pbtxt")) as f, \
            open(os.path.join(recorded["Schema"].local_path, "schema.pbtxt")) as g:
        assert f.read() == g.read()
    # Its input is the recorded artifact itself: id, URI, properties.
    [stats_in] = schema.invocation.inputs["statistics"]
    assert stats_in["id"] == recorded["ExampleStatistics"].id
    assert stats_in["uri"] == recorded["ExampleStatistics"].uri
    assert json.loads(stats_in["properties"]["split_names"]) == ["train", "eval"]

    stats = replay(store_path, "r1", "statistics_gen", scratch_dir=str(tmp_path / "t"), echo=None)
    assert stats.succeeded, stats.result.error
    [out] = stats.outputs["statistics"]
    assert out.uri.startswith(str(tmp_path / "t") + os.sep)
    for split in ("train", "eval"):
        names = []
        for base in (out.uri, recorded["ExampleStatistics"].local_path):
            got = statistics_pb2.DatasetFeatureStatisticsList()
            with open(os.path.join(base, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
                got.ParseFromString(f.read())
            names.append(sorted(".".join(f.path.step) for ds in got.datasets for f in ds.features))
        assert names[0] == names[1] and "fare" in names[0]

    # Nothing recorded, nothing written under the pipeline root.
    assert _digest(store_path) == before
    assert _files(root) == files_before
    assert [r.run_id for r in lineage.runs(store_path)] == ["r2", "r1"]


def test_replay_trainer_and_pusher_write_only_under_the_scratch_directory(taxi_runs, tmp_path):
    store_path, root = taxi_runs["store"], taxi_runs["root"]
    before, files_before = _digest(store_path), _files(root)
    trained = replay(store_path, "r2", "trainer", scratch_dir=str(tmp_path / "t"), echo=None)
    assert trained.succeeded, trained.result.error
    # Recorded as JSON text, replayed as the dataclass it was.
    assert trained.invocation.parameters["train_args"] == {"num_steps": 30, "splits": ["train"]}
    model = trained.outputs["model"][0].uri
    assert os.path.isfile(os.path.join(model, "Format-Serving", "saved_model.pb"))

    pushed = replay(store_path, "r1", "pusher", scratch_dir=str(tmp_path / "p"), echo=None)
    assert pushed.succeeded, pushed.result.error
    # The push went into the scratch directory, not to the serving directory.
    assert pushed.outputs["pushed_model"][0].get("pushed_destination").startswith(str(tmp_path / "p") + os.sep)
    assert any("push goes to" in n for n in pushed.notes)
    assert _digest(store_path) == before
    assert _files(root) == files_before


def test_replay_refuses_a_resolver_and_a_missing_node(taxi_runs):
    for resolver in ("latest_blessed_model_resolver", "analyzer_cache"):
        with pytest.raises(ReplayError, match="is a resolver: .* no executor to replay"):
            replay(taxi_runs["store"], "r1", resolver, echo=None)
    with pytest.raises(lineage.LineageNotFoundError, match="no execution of node 'nope'.*schema_gen"):
        replay(taxi_runs["store"], "r1", "nope", echo=None)


def test_replay_command_on_the_taxi_store(taxi_runs, tmp_path, capsys):
    assert _cli("r1", "schema_gen", "--store", taxi_runs["store"], "--scratch", str(tmp_path / "s")) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "s") in out and "schema_gen: replayed OK" in out
    assert os.listdir(tmp_path / "s" / "schema_gen" / "schema")
    assert _cli("r1", "schema_gen", "--store", taxi_runs["store"], "--scratch", str(tmp_path / "j"), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["succeeded"] and data["node"] == "schema_gen"
    assert data["outputs"]["schema"][0]["uri"].startswith(str(tmp_path / "j"))
    # The same scratch twice: nothing is overwritten.
    assert _cli("r1", "schema_gen", "--store", taxi_runs["store"], "--scratch", str(tmp_path / "j")) == 2
    assert "already holds" in capsys.readouterr().err
    assert _cli("r1", "nope", "--store", taxi_runs["store"]) == 1
    assert "not found:" in capsys.readouterr().err
    assert _cli("r1", "--store", taxi_runs["store"]) == 2
    assert "expected RUN NODE" in capsys.readouterr().err
    assert _cli("r1", "schema_gen") == 2
    assert "which metadata store?" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A node that failed
# ---------------------------------------------------------------------------


@pytest.fixture()
def failed_run(tmp_path):
    rows = lightweight.make_rows(n=4)
    broken = lightweight.explode(examples=rows.outputs["rows"])
    run = LocalRunner(echo=lambda _: None).run(
        Pipeline("broken", str(tmp_path / "root"), [rows, broken]), run_id="b1", raise_on_failure=False)
    assert run.nodes["explode"].state == "FAILED"
    return run


def test_a_failed_node_fails_again_here_with_its_traceback_in_the_components_code(failed_run, tmp_path):
    before = _digest(failed_run.metadata_path)
    recorded = lineage.run(failed_run.metadata_path, "b1").node("explode")
    result = replay(failed_run.metadata_path, "latest", "explode", scratch_dir=str(tmp_path / "s"), echo=None)
    assert not result.succeeded
    assert isinstance(result.error, ValueError) and str(result.error) == "bad rows in the input"
    assert "bad rows in the input" in recorded.error and "bad rows in the input" in result.result.error
    # It ran in this process: the traceback goes from here into the function's code.
    frames = traceback.extract_tb(result.error.__traceback__)
    assert frames[-1].filename == lightweight.__file__ and frames[-1].name == "explode"
    assert any(f.filename.endswith(os.path.join("conveyor", "launch.py")) for f in frames)
    # What it wrote before failing is kept for a look, under the scratch directory only.
    [model] = result.outputs["model"]
    assert model.uri.startswith(str(tmp_path / "s") + os.sep)
    with open(os.path.join(model.uri, "partial.txt")) as f:
        assert f.read() == "half-written"
    # Its input is the recorded one, whose files are the run's.
    [rows] = result.invocation.inputs["examples"]
    assert rows["id"] == failed_run.nodes["make_rows"].outputs["rows"][0].id
    assert _digest(failed_run.metadata_path) == before


def test_replay_command_prints_the_executors_traceback_and_exits_1(failed_run, tmp_path, capsys):
    code = _cli("b1", "explode", "--store", failed_run.metadata_path, "--scratch", str(tmp_path / "s"))
    assert code == 1
    captured = capsys.readouterr()
    assert str(tmp_path / "s") in captured.out
    assert "Traceback (most recent call last)" in captured.err
    assert "lightweight.py" in captured.err and "ValueError: bad rows in the input" in captured.err


def test_input_files_that_are_gone_are_named_with_their_uri(failed_run):
    [rows] = failed_run.nodes["make_rows"].outputs["rows"]
    shutil.rmtree(rows.uri)
    gone = rf"input 'examples' \(artifact {rows.id}, Examples\) has no files at {re.escape(rows.uri)}"
    with pytest.raises(lineage.LineageNotFoundError, match=gone):
        replay(failed_run.metadata_path, "b1", "explode", echo=None)


# ---------------------------------------------------------------------------
# Parameters: secrets, types, overrides; classes from a pipeline file
# ---------------------------------------------------------------------------

SECRET_PIPELINE = textwrap.dedent(
    """
    import json, os
    from conveyor import Pipeline
    from conveyor.artifacts import Examples, Model
    from conveyor.components import component, InputArtifact, OutputArtifact, Parameter

    @component
    def make(rows: OutputArtifact[Examples]) -> None:
        open(os.path.join(rows.uri, "rows.txt"), "w").write("r\\n")

    @component
    def call_api(rows: InputArtifact[Examples], out: OutputArtifact[Model], api_token: str = "",
                 attempts: Parameter[int] = 1, dry_run: bool = False, label: str = "",
                 custom_config: dict = None) -> str:
        if api_token != "s3cret":
            raise PermissionError("the API refused the token")
        seen = {"attempts": attempts, "dry_run": dry_run, "label": label, "custom_config": custom_config}
        open(os.path.join(out.uri, "seen.json"), "w").write(json.dumps(seen))
        return "called"

    def create_pipeline():
        m = make()
        api = call_api(rows=m.outputs["rows"], api_token="s3cret", attempts=3, dry_run=True, label="null",
                       custom_config={"db_password": "hunter2", "region": "eu"})
        return Pipeline("secret", os.path.join(os.path.dirname(__file__), "root"), [m, api])
    """
)


@pytest.fixture()
def secret_run(tmp_path):
    from conveyor.cli import load_pipeline

    path = tmp_path / "pipeline.py"
    path.write_text(SECRET_PIPELINE)
    pipeline = load_pipeline(str(path))
    run = LocalRunner(echo=lambda _: None).run(pipeline, run_id="s1")
    assert run.succeeded
    return run


def test_masked_secrets_must_be_given_and_recorded_types_come_back(secret_run, tmp_path):
    store = secret_run.metadata_path
    recorded = lineage.execution(store, secret_run.nodes["call_api"].execution_id).parameters
    assert recorded["api_token"] == "***" and json.loads(recorded["custom_config"])["db_password"] == "***"
    with pytest.raises(ReplayError, match=r"'api_token', 'custom_config.db_password' were recorded masked.*"
                       r"overrides=\{'api_token': VALUE, 'custom_config.db_password': VALUE\}.*"
                       r"--set api_token=VALUE --set custom_config.db_password=VALUE"):
        replay(store, "s1", "call_api", echo=None)
    result = replay(store, "s1", "call_api", scratch_dir=str(tmp_path / "s"), echo=None,
                    overrides={"api_token": "s3cret", "custom_config.db_password": "x"})
    assert result.succeeded, result.result.error
    assert result.result.note == "called"
    with open(os.path.join(result.outputs["out"][0].uri, "seen.json")) as f:
        seen = json.load(f)
    # An int, a bool recorded as 0/1, a string that looks like JSON, a dict recorded as JSON.
    assert seen == {"attempts": 3, "dry_run": True, "label": "null",
                    "custom_config": {"db_password": "x", "region": "eu"}}
    # The JSON view keeps the secrets out.
    assert result.to_json()["parameters"]["api_token"] == "***"
    # A wrong value fails in the component, as the run would have.
    wrong = replay(store, "s1", "call_api", scratch_dir=str(tmp_path / "w"), echo=None,
                   overrides={"api_token": "nope", "custom_config": {}})
    assert isinstance(wrong.error, PermissionError)
    with pytest.raises(ReplayError, match="no parameter 'api_tokn'. Did you mean 'api_token'"):
        replay(store, "s1", "call_api", overrides={"api_tokn": "s3cret"}, echo=None)


def test_replay_command_set_flags(secret_run, tmp_path, capsys):
    store = secret_run.metadata_path
    assert _cli("s1", "call_api", "--store", store) == 2
    assert "--set api_token=VALUE" in capsys.readouterr().err
    code = _cli("s1", "call_api", "--store", store, "--scratch", str(tmp_path / "s"),
                "--set", "api_token=s3cret", "--set", "custom_config.db_password=x", "--set", "attempts=5")
    assert code == 0, capsys.readouterr().err
    [seen] = (tmp_path / "s").glob("call_api/out/*/seen.json")
    assert json.loads(seen.read_text())["attempts"] == 5
    assert _cli("s1", "call_api", "--store", store, "--set", "api_token") == 2
    assert "--set expects NAME=VALUE" in capsys.readouterr().err


def test_the_class_of_a_pipeline_file_is_loaded_from_its_recorded_file(secret_run, tmp_path, monkeypatch):
    import sys

    # Another file loaded under the pipeline file's module name must not stand in for it.
    other = tmp_path / "other.py"
    other.write_text("X = 1\n")
    monkeypatch.setitem(sys.modules, "conveyor_pipeline", types.ModuleType("conveyor_pipeline"))
    sys.modules["conveyor_pipeline"].__file__ = str(other)
    result = replay(secret_run.metadata_path, "s1", "call_api", scratch_dir=str(tmp_path / "s"), echo=None,
                    overrides={"api_token": "s3cret", "custom_config": {}})
    assert result.succeeded, result.result.error
    assert result.invocation.code_file == str(tmp_path / "pipeline.py")


def test_a_store_without_recorded_classes_replays_with_the_pipeline_given(tmp_path, monkeypatch):
    from conveyor.pipeline import driver

    recorded = driver.execution_properties

    def as_before(component, params):  # what a Conveyor before replay recorded
        properties = recorded(component, params)
        for name in ("__component_class__", "__executor__", "__code_file__"):
            properties.pop(name)
        return properties

    monkeypatch.setattr(driver, "execution_properties", as_before)
    rows = lightweight.make_rows(n=2)
    counter = lightweight.count_rows(examples=rows.outputs["rows"])
    pipeline = Pipeline("old", str(tmp_path / "root"), [rows, counter])
    LocalRunner(echo=lambda _: None).run(pipeline, run_id="o1")
    with pytest.raises(ReplayError, match="no recorded component class .* `conveyor replay PIPELINE.py RUN NODE`"):
        replay(pipeline.metadata, "o1", "count_rows", echo=None)
    result = replay(pipeline.metadata, "o1", "count_rows", pipeline=pipeline, scratch_dir=str(tmp_path / "s"),
                    echo=None)
    assert result.succeeded and result.result.note == "counted 2 rows"


# ---------------------------------------------------------------------------
# Module files: the file as it is now, or the snapshot of what ran
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModuleParams:
    module_file: str


def _run_module(inputs: dict, outputs: dict, params: ModuleParams, ctx: object) -> str:
    value = runpy.run_path(params.module_file)["VALUE"]
    with open(os.path.join(outputs["model"][0].uri, "value.txt"), "w") as f:
        f.write(str(value))
    return str(value)


class RunsModule(Component):
    """Loads a user module file, as Transform and Trainer do."""

    OUTPUTS = {"model": Model}
    Params = ModuleParams
    EXECUTOR = staticmethod(_run_module)
    CODE_PARAMS = ("module_file",)


def test_a_changed_module_file_is_replayed_as_it_is_now_and_its_snapshot_on_request(tmp_path):
    module = tmp_path / "user_code.py"
    module.write_text("VALUE = 1\n")
    run = LocalRunner(echo=lambda _: None).run(
        Pipeline("code", str(tmp_path / "root"), [RunsModule(module_file=str(module))]), run_id="c1")
    store = run.metadata_path
    module.write_text("VALUE = 2\n")
    now = replay(store, "c1", "runs_module", scratch_dir=str(tmp_path / "a"), echo=None)
    assert now.result.note == "2"
    [note] = now.notes
    assert "changed since the run" in note
    snapshot = note.split("--set module_file=")[1].rstrip(")")
    assert snapshot.startswith(str(tmp_path / "root" / "_code"))
    then = replay(store, "c1", "runs_module", scratch_dir=str(tmp_path / "b"), echo=None,
                  overrides={"module_file": snapshot})
    assert then.result.note == "1"
    # The file gone: the snapshot that ran is replayed.
    module.unlink()
    gone = replay(store, "c1", "runs_module", scratch_dir=str(tmp_path / "c"), echo=None)
    assert gone.result.note == "1" and "is gone" in gone.notes[0]


# ---------------------------------------------------------------------------
# A store TFX wrote
# ---------------------------------------------------------------------------


def test_a_tfx_execution_is_refused_as_not_a_conveyor_executor(tmp_path):
    if not os.path.isfile(os.path.join(TFX_STORE, "metadata.sqlite")):
        pytest.fail(f"the TFX store is missing: expected {TFX_STORE}/metadata.sqlite (see its README.md)")
    copy = tmp_path / "metadata.sqlite"
    shutil.copy(os.path.join(TFX_STORE, "metadata.sqlite"), copy)
    before = _digest(str(copy))
    for node in ("StatisticsGen", "Trainer", "latest_blessed_model_resolver"):
        with pytest.raises(ReplayError, match=r"not a Conveyor executor's execution: TFX recorded it \(type "
                           r"'tfx\..*Replay runs Conveyor's executors only"):
            replay(str(copy), "latest", node, echo=None)
    assert _digest(str(copy)) == before
