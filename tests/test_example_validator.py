"""ExampleValidator on real StatisticsGen and SchemaGen output, with real TFDV."""

from __future__ import annotations

import json
import os

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from conveyor import schema as schema_lib
from conveyor.artifacts import ExampleAnomalies, ExampleStatistics, Schema
from conveyor.components import example_validator
from conveyor.components.base import ExecutionContext
from conveyor.components.example_validator import ExampleValidator, ExampleValidatorParams
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TAXI = os.path.join(os.path.dirname(__file__), "testdata", "taxi")


def statistics() -> ExampleStatistics:
    with open(os.path.join(TAXI, "statistics_gen", "statistics.json")) as f:
        record = json.load(f)
    uri = os.path.join(TAXI, "statistics_gen", "statistics")
    return ExampleStatistics(uri, properties=record["properties"])


def inferred_schema() -> schema_pb2.Schema:
    return schema_lib.load(os.path.join(TAXI, "schema_gen", "schema"))


def validate(tmp_path, params: ExampleValidatorParams, schema: schema_pb2.Schema | None = None,
             stats: ExampleStatistics | None = None) -> ExampleAnomalies:
    schema_uri = os.path.join(TAXI, "schema_gen", "schema")
    if schema is not None:
        schema_uri = str(tmp_path / "schema")
        schema_lib.save(schema, os.path.join(schema_uri, "schema.pbtxt"))
    out = ExampleAnomalies(str(tmp_path / "anomalies"))
    os.makedirs(out.uri, exist_ok=True)
    example_validator.run(
        {"statistics": [stats or statistics()], "schema": [Schema(schema_uri)]}, {"anomalies": [out]}, params,
        ExecutionContext("example_validator"),
    )
    return out


def read(out: ExampleAnomalies, split: str) -> anomalies_pb2.Anomalies:
    anomalies = anomalies_pb2.Anomalies()
    with open(os.path.join(out.uri, f"Split-{split}", "SchemaDiff.pb"), "rb") as f:
        anomalies.ParseFromString(f.read())
    return anomalies


def curated() -> schema_pb2.Schema:
    """The inferred schema made stricter than the data: hours 0-10 only, payment_type an INT."""
    schema = inferred_schema()
    schema_lib.set_domain(schema, "trip_start_hour", min=0, max=10)
    schema_lib.feature(schema, "payment_type").type = schema_pb2.INT
    return schema


def test_taxi_splits_match_the_inferred_schema(tmp_path):
    out = validate(tmp_path, ExampleValidatorParams())
    assert out.splits == ["train", "eval"]
    for split in out.splits:
        anomalies = read(out, split)
        assert dict(anomalies.anomaly_info) == {}
        assert anomalies.baseline == inferred_schema()
    assert out.custom_properties["anomalies_found"] == 0
    assert json.loads(out.custom_properties["anomalies_by_split"]) == {"train": 0, "eval": 0}


def test_anomalies_are_recorded(tmp_path):
    out = validate(tmp_path, ExampleValidatorParams(exclude_splits=["train"]), curated())
    assert out.splits == ["eval"] and os.listdir(out.uri) == ["Split-eval"]
    anomalies = read(out, "eval")
    assert sorted(anomalies.anomaly_info) == ["payment_type", "trip_start_hour"]
    hour = anomalies.anomaly_info["trip_start_hour"]
    assert hour.severity == anomalies_pb2.AnomalyInfo.ERROR
    assert anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT in [r.type for r in hour.reason]
    assert out.custom_properties["anomalies_found"] == 2
    assert json.loads(out.custom_properties["anomalies_by_split"]) == {"eval": 2}


def test_fail_on_anomalies_lists_them_and_writes_nothing(tmp_path):
    with pytest.raises(ExecutorError) as e:
        validate(tmp_path, ExampleValidatorParams(fail_on_anomalies=True), curated())
    message = str(e.value)
    assert message.startswith("example_validator: 4 anomalies")
    for split in ("train", "eval"):
        assert f"split {split!r}, trip_start_hour: Out-of-range values" in message
        assert f"split {split!r}, payment_type: " in message
    assert "fail_on_anomalies=False" in message
    assert os.listdir(tmp_path / "anomalies") == []
    # Without anomalies, fail_on_anomalies passes.
    out = validate(tmp_path, ExampleValidatorParams(fail_on_anomalies=True, exclude_splits=["train"]))
    assert out.custom_properties["anomalies_found"] == 0


def test_schema_environments(tmp_path):
    # Serving data lacks the label: statistics of eval without `tips`.
    serving_dir = tmp_path / "serving_stats" / "Split-serving"
    serving_dir.mkdir(parents=True)
    stats = schema_lib.load_statistics(os.path.join(statistics().uri, "Split-eval"))
    kept = [f for f in stats.datasets[0].features if f.path.step[0] != "tips"]
    del stats.datasets[0].features[:]
    stats.datasets[0].features.extend(kept)
    (serving_dir / "FeatureStats.pb").write_bytes(stats.SerializeToString())
    serving = ExampleStatistics(str(tmp_path / "serving_stats"))
    serving.splits = ["serving"]

    schema = inferred_schema()
    # As TFX does, with no environment every feature is expected: the label is missing.
    out = validate(tmp_path / "plain", ExampleValidatorParams(), schema, serving)
    assert list(read(out, "serving").anomaly_info) == ["tips"]

    schema_lib.set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    out = validate(tmp_path / "serving", ExampleValidatorParams(environment="SERVING"), schema, serving)
    assert dict(read(out, "serving").anomaly_info) == {}
    out = validate(tmp_path / "training", ExampleValidatorParams(environment="TRAINING"), schema, serving)
    assert list(read(out, "serving").anomaly_info) == ["tips"]

    typo = r"environment 'SERVNG' is not an environment.*Did you mean 'SERVING'"
    with pytest.raises(ExecutorError, match=typo):
        validate(tmp_path / "typo", ExampleValidatorParams(environment="SERVNG"), schema, serving)
    assert os.listdir(tmp_path / "typo" / "anomalies") == []


def test_bad_input(tmp_path):
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "schema.pbtxt").write_text("feature { nme: 'x' }\n")
    out = ExampleAnomalies(str(tmp_path / "anomalies"))
    os.makedirs(out.uri)
    with pytest.raises(ExecutorError, match=r"schema.pbtxt, line 1.*Did you mean 'name'"):
        example_validator.run(
            {"statistics": [statistics()], "schema": [Schema(str(tmp_path / "schema"))]},
            {"anomalies": [out]}, ExampleValidatorParams(), ExecutionContext("example_validator"),
        )
    with pytest.raises(ExecutorError, match=r"exclude_splits names 'Eval'.*Did you mean 'eval'"):
        validate(tmp_path, ExampleValidatorParams(exclude_splits=["Eval"]))
    assert os.listdir(out.uri) == []


def test_component_needs_statistics_and_schema():
    validator = ExampleValidator(statistics=Channel(ExampleStatistics), schema=Channel(Schema),
                                 fail_on_anomalies=True)
    assert validator.outputs["anomalies"].type is ExampleAnomalies
    with pytest.raises(PipelineDefinitionError, match="missing its required input 'schema'"):
        ExampleValidator(statistics=Channel(ExampleStatistics))
