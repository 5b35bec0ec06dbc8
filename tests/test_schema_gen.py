"""SchemaGen on real StatisticsGen output, and ImportSchemaGen."""

from __future__ import annotations

import json
import os

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from conveyor import schema as schema_lib
from conveyor.artifacts import ExampleStatistics, Schema
from conveyor.components import schema_gen
from conveyor.components.base import ExecutionContext
from conveyor.components.schema_gen import ImportSchemaGen, ImportSchemaGenParams, SchemaGen, SchemaGenParams
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


def statistics(name: str = "taxi") -> ExampleStatistics:
    base = os.path.join(TESTDATA, name, "statistics_gen")
    with open(os.path.join(base, "statistics.json")) as f:
        record = json.load(f)
    return ExampleStatistics(os.path.join(base, "statistics"), properties=record["properties"])


def infer(tmp_path, params: SchemaGenParams, stats: ExampleStatistics | None = None) -> schema_pb2.Schema:
    out = Schema(str(tmp_path / "schema"))
    os.makedirs(out.uri, exist_ok=True)
    inputs = {"statistics": [stats or statistics()]}
    schema_gen.run(inputs, {"schema": [out]}, params, ExecutionContext("schema_gen"))
    assert os.listdir(out.uri) == ["schema.pbtxt"]
    return schema_lib.load(out.uri)


def test_taxi_schema_has_every_column_with_its_type(tmp_path):
    schema = infer(tmp_path, SchemaGenParams())
    types = {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature}
    assert len(types) == 18
    assert {types[n] for n in ("fare", "tips", "trip_miles", "pickup_latitude")} == {"FLOAT"}
    assert {types[n] for n in ("trip_start_hour", "trip_start_timestamp", "trip_seconds")} == {"INT"}
    assert types["payment_type"] == types["company"] == "BYTES"
    # Always present with one value: a fixed shape; sometimes missing: optional, one value when present.
    fare = schema_lib.feature(schema, "fare")
    assert [d.size for d in fare.shape.dim] == [1] and fare.presence.min_fraction == 1.0
    area = schema_lib.feature(schema, "pickup_community_area")
    assert not area.HasField("shape") and (area.value_count.min, area.value_count.max) == (1, 1)
    assert area.presence.min_fraction < 1.0
    # Strings get a named domain of the values seen.
    payment = schema_lib.feature(schema, "payment_type")
    domain = next(d for d in schema.string_domain if d.name == payment.domain)
    assert {"Cash", "Credit Card"} <= set(domain.value)


def test_no_feature_shape_and_exclude_splits(tmp_path):
    schema = infer(tmp_path, SchemaGenParams(infer_feature_shape=False, exclude_splits=["eval"]))
    assert not any(f.HasField("shape") for f in schema.feature)
    fare = schema_lib.feature(schema, "fare")
    assert (fare.value_count.min, fare.value_count.max) == (1, 1)
    # Inferred from train alone, the schema differs from the one that also saw eval.
    both = schema_lib.load(os.path.join(TESTDATA, "taxi", "schema_gen", "schema"))
    train_only = schema_lib.infer(os.path.join(statistics().uri, "Split-train", "FeatureStats.pb"))
    assert schema_lib.diff(train_only, both) != []


def test_penguin_schema(tmp_path):
    schema = infer(tmp_path, SchemaGenParams(), statistics("penguin"))
    types = {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature}
    assert types == {"species": "INT", "culmen_length_mm": "FLOAT", "culmen_depth_mm": "FLOAT",
                     "flipper_length_mm": "FLOAT", "body_mass_g": "FLOAT"}


def test_schema_gen_bad_input(tmp_path):
    with pytest.raises(ExecutorError, match=r"exclude_splits names 'test'.*\['train', 'eval'\]"):
        infer(tmp_path, SchemaGenParams(exclude_splits=["test"]))
    missing = ExampleStatistics(str(tmp_path / "nostats"))
    missing.splits = ["train"]
    with pytest.raises(ExecutorError, match=r"Split-train/FeatureStats.pb does not exist"):
        infer(tmp_path, SchemaGenParams(), missing)
    assert not os.path.exists(tmp_path / "schema" / "schema.pbtxt")


def import_schema(tmp_path, schema_file: str) -> Schema:
    out = Schema(str(tmp_path / "imported"))
    os.makedirs(out.uri, exist_ok=True)
    schema_gen.run_import({}, {"schema": [out]}, ImportSchemaGenParams(schema_file=schema_file),
                          ExecutionContext("import_schema_gen"))
    return out


def test_import_schema_gen_copies_a_curated_schema(tmp_path):
    curated = schema_lib.load(os.path.join(TESTDATA, "taxi", "schema_gen", "schema"))
    schema_lib.set_environments(curated, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    path = tmp_path / "my_schema.pbtxt"
    from google.protobuf import text_format

    text = "# Curated by hand.\n" + text_format.MessageToString(curated)
    path.write_text(text)
    out = import_schema(tmp_path, str(path))
    assert (tmp_path / "imported" / "schema.pbtxt").read_text() == text
    assert schema_lib.load(out.uri) == curated
    # The file's content is part of the component's cache key.
    before = ImportSchemaGen(schema_file=str(path)).external_fingerprints()
    path.write_text(text + "\n# edited\n")
    after = ImportSchemaGen(schema_file=str(path)).external_fingerprints()
    assert set(before) == {"schema_file"} and before != after


def test_import_schema_gen_rejects_a_bad_file(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text('feature {\n  name: "fare"\n  type: FLOAT\n  presense { min_fraction: 1 }\n}\n')
    with pytest.raises(ExecutorError) as e:
        import_schema(tmp_path, str(path))
    message = str(e.value)
    assert message.startswith("import_schema_gen: ")
    assert f"{path}, line 4" in message and "presense" in message and "Fix that line" in message
    assert os.listdir(tmp_path / "imported") == []

    path.write_text("# nothing yet\n")
    with pytest.raises(ExecutorError, match="declares no features"):
        import_schema(tmp_path, str(path))
    with pytest.raises(ExecutorError, match="does not exist"):
        import_schema(tmp_path, str(tmp_path / "nope.pbtxt"))
    assert os.listdir(tmp_path / "imported") == []


def test_components_wire_and_check():
    gen = SchemaGen(statistics=Channel(ExampleStatistics), exclude_splits=["eval"])
    assert gen.outputs["schema"].type is Schema and gen.params.infer_feature_shape is True
    with pytest.raises(PipelineDefinitionError, match="schema_file"):
        ImportSchemaGen()
    with pytest.raises(PipelineDefinitionError, match="expects bool"):
        SchemaGen(statistics=Channel(ExampleStatistics), infer_feature_shape="yes")
