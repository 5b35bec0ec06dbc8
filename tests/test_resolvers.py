"""Resolver and Importer nodes, and function components, on a real MLMD store."""

from __future__ import annotations

import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner, Pipeline, PipelineDefinitionError, RunFailedError
from conveyor.artifacts import Model, ModelBlessing, Schema
from conveyor.components import Importer, LatestArtifact, LatestBlessedModel
from conveyor.components.function import InputArtifact, OutputArtifact, Parameter, component
from conveyor.metadata.store import RESOLVER_TYPE_NAME, Metadata, event_paths


@component
def train(model: OutputArtifact[Model], quality: Parameter[float] = 0.5) -> None:
    with open(os.path.join(model.uri, "quality"), "w") as f:
        f.write(str(quality))


@component
def judge(model: InputArtifact[Model], blessing: OutputArtifact[ModelBlessing]) -> None:
    with open(os.path.join(model.uri, "quality")) as f:
        good = float(f.read()) > 0.7
    open(os.path.join(blessing.uri, "BLESSED" if good else "NOT_BLESSED"), "w").close()
    blessing.set("blessed", int(good))
    blessing.custom_properties["current_model_id"] = model.id


@component
def read_schema(schema: InputArtifact[Schema], model: OutputArtifact[Model]) -> str:
    with open(os.path.join(schema.uri, "schema.pbtxt")) as f:
        return f.read().strip()


def _quiet():
    return LocalRunner(echo=lambda line: None)


def _blessing_pipeline(root, quality):
    t = train(quality=quality)
    baseline = LatestBlessedModel(candidate=t.outputs["model"])
    j = judge(model=t.outputs["model"])
    return Pipeline("bless", str(root), [t, baseline, j])


def test_latest_blessed_model_skips_unblessed_and_the_candidate(tmp_path):
    r1 = _quiet().run(_blessing_pipeline(tmp_path, 0.9))  # blessed
    assert r1.outputs("latest_blessed_model", "model") == []
    blessed_model = r1.outputs("train", "model")[0]
    r2 = _quiet().run(_blessing_pipeline(tmp_path, 0.1))  # not blessed
    assert [a.id for a in r2.outputs("latest_blessed_model", "model")] == [blessed_model.id]
    r3 = _quiet().run(_blessing_pipeline(tmp_path, 0.2))
    # The unblessed model of run 2 is never a baseline.
    assert [a.id for a in r3.outputs("latest_blessed_model", "model")] == [blessed_model.id]
    # Re-running the blessed model's parameters: the candidate is that model, so no baseline.
    r4 = _quiet().run(_blessing_pipeline(tmp_path, 0.9))
    assert r4.nodes["train"].state == "CACHED"
    assert r4.outputs("latest_blessed_model", "model") == []


def test_resolver_records_its_choice_as_internal_output(tmp_path):
    r1 = _quiet().run(_blessing_pipeline(tmp_path, 0.9))  # blessed
    r2 = _quiet().run(_blessing_pipeline(tmp_path, 0.8))  # a new candidate; r1's model is the baseline
    [model] = r1.outputs("train", "model")
    [blessing] = r1.outputs("judge", "blessing")
    assert [a.id for a in r2.outputs("latest_blessed_model", "model_blessing")] == [blessing.id]
    md = Metadata(r2.metadata_path)
    execution = md.execution(r2.nodes["latest_blessed_model"].execution_id)
    # As TFX 1.16: one execution type for every resolver, its choice INTERNAL_OUTPUT.
    assert md.execution_type_name(execution) == RESOLVER_TYPE_NAME
    events = md.store.get_events_by_execution_ids([execution.id])
    recorded = sorted((pb.Event.Type.Name(ev.type), event_paths(ev), ev.artifact_id) for ev in events)
    assert recorded == [
        ("INPUT", [("candidate", 0)], r2.outputs("train", "model")[0].id),
        ("INTERNAL_OUTPUT", [("model", 0)], model.id),
        ("INTERNAL_OUTPUT", [("model_blessing", 0)], blessing.id),
    ]
    # So the model's producer is still the trainer, not the resolver that passed it on.
    assert md.producer_of(model.id) == r1.nodes["train"].execution_id
    assert md.io_of(execution.id, "OUTPUT") == {}


@component
def compare(first: InputArtifact[Model], second: InputArtifact[Model], report: OutputArtifact[Model]) -> None:
    open(os.path.join(report.uri, "same"), "w").write(str(first.uri == second.uri))


def test_artifact_under_two_input_keys_is_one_event_with_two_paths(tmp_path):
    # MLMD holds one event per (artifact, execution, kind): TFX's path [k1, i1, k2, i2].
    def build():
        t = train(quality=0.5)
        return Pipeline("twice", str(tmp_path), [t, compare(first=t.outputs["model"], second=t.outputs["model"])])

    result = _quiet().run(build())
    md = Metadata(result.metadata_path)
    [model] = result.outputs("train", "model")
    execution_id = result.nodes["compare"].execution_id
    inputs = [ev for ev in md.store.get_events_by_execution_ids([execution_id]) if ev.type == pb.Event.INPUT]
    assert [(ev.artifact_id, event_paths(ev)) for ev in inputs] == [(model.id, [("first", 0), ("second", 0)])]
    assert {k: [a.id for a in v] for k, v in md.io_of(execution_id, "INPUT").items()} == {
        "first": [model.id], "second": [model.id]
    }
    # Run again: a cache hit from the same record.
    again = _quiet().run(build())
    assert again.nodes["compare"].state == "CACHED"
    assert again.outputs("compare", "report")[0].id == result.outputs("compare", "report")[0].id


def test_latest_artifact_returns_newest_of_a_producer(tmp_path):
    def build(q):
        t = train(quality=q)
        latest = LatestArtifact(artifact_type="Model", producer="train", id="latest")
        return Pipeline("latest", str(tmp_path), [latest, t])

    r1 = _quiet().run(build(0.1))
    assert r1.outputs("latest", "artifact") == []
    r2 = _quiet().run(build(0.2))
    assert [a.id for a in r2.outputs("latest", "artifact")] == [r1.outputs("train", "model")[0].id]


def test_latest_artifact_unknown_type_suggests_name():
    with pytest.raises(PipelineDefinitionError, match="Did you mean 'Model'"):
        LatestArtifact(artifact_type="Modle")


def test_importer_reuses_same_content_and_reimports_changed_content(tmp_path):
    schema_dir = tmp_path / "curated"
    schema_dir.mkdir()
    (schema_dir / "schema.pbtxt").write_text("feature { name: 'a' type: INT }\n")

    def build():
        imp = Importer(source_uri=str(schema_dir), artifact_type="Schema", id="schema_importer")
        reader = read_schema(schema=imp.outputs["result"])
        return Pipeline("imp", str(tmp_path / "root"), [imp, reader])

    r1 = _quiet().run(build())
    [imported] = r1.outputs("schema_importer", "result")
    assert isinstance(imported, Schema) and imported.uri == str(schema_dir)
    # An Importer makes the artifact: OUTPUT, its producer (as TFX's Importer).
    md = Metadata(r1.metadata_path)
    assert md.producer_of(imported.id) == r1.nodes["schema_importer"].execution_id
    importer_execution = md.execution(r1.nodes["schema_importer"].execution_id)
    assert md.execution_type_name(importer_execution) == "conveyor.components.resolver.Importer"
    r2 = _quiet().run(build())
    assert r2.outputs("schema_importer", "result")[0].id == imported.id
    assert r2.nodes["read_schema"].state == "CACHED"
    (schema_dir / "schema.pbtxt").write_text("feature { name: 'b' type: FLOAT }\n")
    r3 = _quiet().run(build())
    assert r3.outputs("schema_importer", "result")[0].id != imported.id
    assert r3.nodes["read_schema"].state == "COMPLETE"


def test_importer_missing_source_fails_the_run_with_a_clear_error(tmp_path):
    imp = Importer(source_uri=str(tmp_path / "nope"), artifact_type="Schema")
    with pytest.raises(RunFailedError, match="does not exist"):
        _quiet().run(Pipeline("imp", str(tmp_path / "root"), [imp]))


def test_function_component_parameters_recorded_in_mlmd(tmp_path):
    result = _quiet().run(Pipeline("fn", str(tmp_path), [train(quality=0.75)]))
    md = Metadata(result.metadata_path)
    [e] = md.store.get_executions_by_id([result.nodes["train"].execution_id])
    assert e.custom_properties["quality"].double_value == 0.75
    [t] = md.store.get_execution_types_by_id([e.type_id])
    assert t.name.endswith(".train")


def test_function_component_checks_annotations():
    def untyped(model, n: int = 1) -> None:  # noqa: ANN001 - the point of the test
        pass

    with pytest.raises(PipelineDefinitionError, match="argument 'model' has no annotation"):
        component(untyped)
