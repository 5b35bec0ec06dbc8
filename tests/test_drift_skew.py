"""Drift between spans and skew between training and serving data, on real
taxi rows: the schema carries TFX's drift/skew comparators (set through
conveyor.schema), a PreviousSpan resolver finds the previous span's
statistics in MLMD, and ExampleValidator lists each feature over its
threshold and fails the run with fail_on_anomalies."""

from __future__ import annotations

import csv
import json
import os

import pytest

from conveyor import LocalRunner, Pipeline
from conveyor import schema as schema_lib
from conveyor.components import CsvExampleGen, ExampleValidator, PreviousSpan, SchemaGen, StatisticsGen
from conveyor.components.example_gen import Input, InputSplit, Output, SplitBucket, SplitConfig
from conveyor.components.schema_gen import ImportSchemaGen
from tests.examples import example_dir

TAXI_CSV = os.path.join(example_dir("taxi"), "data", "data.csv")


def _write(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def taxi_rows():
    with open(TAXI_CSV, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def _all_cash(header, rows):
    i = header.index("payment_type")
    return [r[:i] + ["Cash"] + r[i + 1:] for r in rows]


@pytest.fixture(scope="module")
def drift_schema(tmp_path_factory, taxi_rows):
    """A schema inferred from all the taxi rows (so every span's values are in
    its domains), with drift and skew comparators on payment_type."""
    header, rows = taxi_rows
    base = tmp_path_factory.mktemp("drift_schema")
    _write(str(base / "data" / "data.csv"), header, rows)
    gen = CsvExampleGen(input_base=str(base / "data"))
    stats = StatisticsGen(examples=gen.outputs["examples"])
    # Some trips lack trip_seconds: no fixed shape, so a span may miss values.
    schema = SchemaGen(statistics=stats.outputs["statistics"], infer_feature_shape=False)
    result = LocalRunner(echo=lambda _: None).run(Pipeline("schema", str(base / "root"), [gen, stats, schema]))
    curated = schema_lib.load(result.outputs("schema_gen", "schema")[0].uri)
    schema_lib.set_drift_comparator(curated, "payment_type", infinity_norm=0.2)
    schema_lib.set_skew_comparator(curated, "payment_type", infinity_norm=0.2)
    return schema_lib.save(curated, str(base / "curated" / "schema.pbtxt"))


def _span_pipeline(root, data, schema_file, fail_on_anomalies):
    gen = CsvExampleGen(input_base=data, input_config=Input(splits=[InputSplit("all", "span-{SPAN}/*.csv")]))
    stats = StatisticsGen(examples=gen.outputs["examples"])
    schema = ImportSchemaGen(schema_file=schema_file)
    previous = PreviousSpan(current=stats.outputs["statistics"])
    validator = ExampleValidator(
        statistics=stats.outputs["statistics"], schema=schema.outputs["schema"],
        previous_statistics=previous.outputs["artifact"], fail_on_anomalies=fail_on_anomalies,
    )
    return Pipeline("spans", root, [gen, stats, schema, previous, validator])


def test_drift_between_spans_fails_the_run_naming_the_feature(tmp_path, taxi_rows, drift_schema):
    header, rows = taxi_rows
    data, root = str(tmp_path / "data"), str(tmp_path / "root")
    _write(os.path.join(data, "span-1", "data.csv"), header, rows[:4000])
    first = LocalRunner(echo=print).run(_span_pipeline(root, data, drift_schema, True))
    assert first.nodes["example_validator"].state == "COMPLETE"
    assert first.outputs("previous_span", "artifact") == []  # the first span has nothing to drift from
    [anomalies] = first.outputs("example_validator", "anomalies")
    assert anomalies.get("anomalies_found") == 0

    # The next span: a similar sample drifts little; every payment "Cash" drifts far.
    _write(os.path.join(data, "span-2", "data.csv"), header, rows[4000:8000])
    similar = LocalRunner(echo=print).run(_span_pipeline(root, data, drift_schema, True))
    [previous] = similar.outputs("previous_span", "artifact")
    assert previous.id == first.outputs("statistics_gen", "statistics")[0].id
    assert similar.nodes["example_validator"].state == "COMPLETE"

    _write(os.path.join(data, "span-3", "data.csv"), header, _all_cash(header, rows[8000:12000]))
    drifted = LocalRunner(echo=print).run(_span_pipeline(root, data, drift_schema, True), raise_on_failure=False)
    node = drifted.nodes["example_validator"]
    assert node.state == "FAILED"
    assert "payment_type" in node.error and "previous" in node.error.lower()
    assert "split 'train'" in node.error and "split 'eval'" in node.error
    [previous] = drifted.outputs("previous_span", "artifact")
    assert previous.get("span") == 2

    recorded = LocalRunner(echo=print, enable_cache=False).run(_span_pipeline(root, data, drift_schema, False))
    [anomalies] = recorded.outputs("example_validator", "anomalies")
    assert json.loads(anomalies.get("anomalies_by_split")) == {"train": 1, "eval": 1}


def test_skew_between_training_and_serving(tmp_path, taxi_rows, drift_schema):
    header, rows = taxi_rows
    _write(str(tmp_path / "train" / "data.csv"), header, rows[:4000])
    _write(str(tmp_path / "serving" / "data.csv"), header, _all_cash(header, rows[4000:6000]))
    train_gen = CsvExampleGen(input_base=str(tmp_path / "train"))
    train_stats = StatisticsGen(examples=train_gen.outputs["examples"])
    serving_gen = CsvExampleGen(
        input_base=str(tmp_path / "serving"),
        output_config=Output(split_config=SplitConfig(splits=[SplitBucket("serving", 1)])),
    ).with_id("serving_example_gen")
    serving_stats = StatisticsGen(examples=serving_gen.outputs["examples"]).with_id("serving_statistics_gen")
    schema = ImportSchemaGen(schema_file=drift_schema)
    validator = ExampleValidator(
        statistics=train_stats.outputs["statistics"], schema=schema.outputs["schema"],
        serving_statistics=serving_stats.outputs["statistics"], fail_on_anomalies=False,
    )
    pipeline = Pipeline("skew", str(tmp_path / "root"),
                        [train_gen, train_stats, serving_gen, serving_stats, schema, validator])
    result = LocalRunner(echo=print).run(pipeline)
    [anomalies] = result.outputs("example_validator", "anomalies")
    # Skew is checked for the train split (skew_splits), not eval.
    assert json.loads(anomalies.get("anomalies_by_split")) == {"train": 1, "eval": 0}
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    recorded = anomalies_pb2.Anomalies()
    with open(os.path.join(anomalies.uri, "Split-train", "SchemaDiff.pb"), "rb") as f:
        recorded.ParseFromString(f.read())
    info = recorded.anomaly_info["payment_type"]
    assert "serving" in (info.short_description + info.description).lower()


def test_comparator_thresholds_are_checked():
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    schema.feature.add(name="payment_type", type=schema_pb2.BYTES)
    with pytest.raises(schema_lib.SchemaError, match="between 0 and 1"):
        schema_lib.set_drift_comparator(schema, "payment_type", infinity_norm=2)
    with pytest.raises(schema_lib.SchemaError, match="needs infinity_norm"):
        schema_lib.set_skew_comparator(schema, "payment_type")
    with pytest.raises(schema_lib.SchemaError, match="payment_type"):
        schema_lib.set_drift_comparator(schema, "payment_typ", infinity_norm=0.1)
    schema_lib.set_drift_comparator(schema, "payment_type", jensen_shannon_divergence=0.3)
    assert schema.feature[0].drift_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.3)
