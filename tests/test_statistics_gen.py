"""StatisticsGen on the real ExampleGen test data, with real Beam and TFDV."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from conveyor import schema as schema_lib
from conveyor.artifacts import Examples, ExampleStatistics, Schema
from conveyor.components import statistics_gen
from conveyor.components.base import ExecutionContext
from conveyor.components.statistics_gen import StatisticsGen, StatisticsGenParams, StatsOptions
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
TAXI_COLUMNS = [
    "pickup_community_area", "fare", "trip_start_month", "trip_start_hour", "trip_start_day",
    "trip_start_timestamp", "pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude",
    "trip_miles", "pickup_census_tract", "dropoff_census_tract", "payment_type", "company", "trip_seconds",
    "dropoff_community_area", "tips",
]


def examples(name: str = "taxi") -> Examples:
    base = os.path.join(TESTDATA, name, "example_gen")
    with open(os.path.join(base, "examples.json")) as f:
        record = json.load(f)
    return Examples(
        os.path.join(base, "examples"),
        properties=record["properties"],
        custom_properties=record["custom_properties"],
    )


def run(tmp_path, params: StatisticsGenParams, *, inputs: dict | None = None, args=()) -> ExampleStatistics:
    out = ExampleStatistics(str(tmp_path / "statistics"))
    os.makedirs(out.uri, exist_ok=True)
    statistics_gen.run(
        inputs or {"examples": [examples()]}, {"statistics": [out]}, params,
        ExecutionContext("statistics_gen", beam_pipeline_args=list(args)),
    )
    return out


def features(stats) -> dict:
    return {f.path.step[0]: f for f in stats.datasets[0].features}


def common(feature):
    stats = feature.num_stats if feature.HasField("num_stats") else feature.string_stats
    return stats.common_stats


def test_statistics_of_every_split_in_two_worker_processes(tmp_path):
    # Beam workers are separate processes here: the DoFns must come from the package.
    out = run(tmp_path, StatisticsGenParams(), args=["--direct_running_mode=multi_processing",
                                                     "--direct_num_workers=2"])
    assert out.splits == ["train", "eval"]
    assert out.get("span") == 0
    row_counts = json.loads(examples().get("row_counts"))
    total = 0
    for split in out.splits:
        files = os.listdir(os.path.join(out.uri, f"Split-{split}"))
        assert files == ["FeatureStats.pb"]
        stats = schema_lib.load_statistics(os.path.join(out.uri, f"Split-{split}", "FeatureStats.pb"))
        assert stats.datasets[0].num_examples == row_counts[split]
        total += stats.datasets[0].num_examples
        by_name = features(stats)
        assert sorted(by_name) == sorted(TAXI_COLUMNS)
        # A null in the Parquet file is a missing value, as in tf.Example, not an empty list.
        fare = common(by_name["fare"])
        assert fare.num_missing == 0 and fare.min_num_values == fare.max_num_values == 1
        company = common(by_name["company"])
        assert 0 < company.num_missing < stats.datasets[0].num_examples
        assert company.num_non_missing + company.num_missing == stats.datasets[0].num_examples
    assert total == 15_002


def test_stats_options_and_exclude_splits(tmp_path):
    options = StatsOptions(num_top_values=3, feature_allowlist=["company", "fare", "tips"])
    out = run(tmp_path, StatisticsGenParams(exclude_splits=["eval"], stats_options=options))
    assert out.splits == ["train"]
    assert not os.path.exists(os.path.join(out.uri, "Split-eval"))
    stats = schema_lib.load_statistics(os.path.join(out.uri, "Split-train"))
    by_name = features(stats)
    assert sorted(by_name) == ["company", "fare", "tips"]
    assert len(by_name["company"].string_stats.top_values) == 3
    assert by_name["fare"].num_stats.max > by_name["fare"].num_stats.min >= 0


def test_schema_input_guides_the_statistics(tmp_path):
    # An INT feature the schema marks categorical gets string statistics (top values).
    schema = schema_lib.load(os.path.join(TESTDATA, "taxi", "schema_gen", "schema"))
    schema_lib.feature(schema, "trip_start_hour").int_domain.is_categorical = True
    schema_lib.save(schema, str(tmp_path / "schema"))
    options = StatsOptions(feature_allowlist=["trip_start_hour", "trip_start_day"])
    out = run(tmp_path, StatisticsGenParams(exclude_splits=["train"], stats_options=options),
              inputs={"examples": [examples()], "schema": [Schema(str(tmp_path / "schema"))]})
    by_name = features(schema_lib.load_statistics(os.path.join(out.uri, "Split-eval")))
    hour, day = by_name["trip_start_hour"], by_name["trip_start_day"]
    assert hour.HasField("string_stats") and hour.string_stats.unique == 24
    assert day.HasField("num_stats") and (day.num_stats.min, day.num_stats.max) == (1, 7)


def test_tfrecord_examples(tmp_path):
    # tf.Example input (file_format tfrecords_gzip) goes through TFXIO, same statistics.
    here = os.path.dirname(os.path.abspath(__file__))
    shards = sorted(glob.glob(os.path.join(here, "testdata", "taxi", "example_gen", "import", "tfrecord", "*.gz")))
    assert shards, "the taxi tf.Example test data is missing"
    split_dir = tmp_path / "examples" / "Split-train"
    split_dir.mkdir(parents=True)
    shutil.copy(shards[0], split_dir / "data-00000-of-00001.gz")
    ex = Examples(str(tmp_path / "examples"), custom_properties={"file_format": "tfrecords_gzip"})
    ex.splits = ["train"]
    out = run(tmp_path, StatisticsGenParams(stats_options=StatsOptions(feature_allowlist=["fare"])),
              inputs={"examples": [ex]})
    stats = schema_lib.load_statistics(os.path.join(out.uri, "Split-train"))
    assert 0 < stats.datasets[0].num_examples <= 10_000
    assert common(features(stats)["fare"]).num_non_missing > 0


def test_bad_input_fails_before_writing(tmp_path):
    with pytest.raises(ExecutorError) as e:
        run(tmp_path, StatisticsGenParams(exclude_splits=["evaluation"]))
    assert "'evaluation'" in str(e.value) and "['train', 'eval']" in str(e.value) and "'eval'" in str(e.value)
    with pytest.raises(ExecutorError, match="excludes every split"):
        run(tmp_path, StatisticsGenParams(exclude_splits=["train", "eval"]))
    with pytest.raises(ExecutorError, match="no such column.* Did you mean 'fare'"):
        run(tmp_path, StatisticsGenParams(stats_options=StatsOptions(weight_feature="fares")))
    empty = Examples(str(tmp_path / "empty"))
    empty.splits = ["train"]
    os.makedirs(os.path.join(empty.uri, "Split-train"))
    with pytest.raises(ExecutorError, match="split 'train' has no data files"):
        run(tmp_path, StatisticsGenParams(), inputs={"examples": [empty]})
    assert os.listdir(tmp_path / "statistics") == []


def test_component_checks_options_at_construction():
    channel = Channel(Examples)
    component = StatisticsGen(examples=channel, stats_options=StatsOptions(num_top_values=5))
    assert component.params.stats_options.num_top_values == 5
    assert component.outputs["statistics"].type is ExampleStatistics
    with pytest.raises(PipelineDefinitionError, match="sample_rate"):
        StatisticsGen(examples=channel, stats_options=StatsOptions(sample_rate=1.5))
    with pytest.raises(PipelineDefinitionError, match="stats_options"):
        StatisticsGen(examples=channel, stats_options={"num_top_values": 5})
