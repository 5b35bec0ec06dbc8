"""Conveyor's Beam components on a portable runner: Beam's own job service and
an EXTERNAL worker pool, which speak the Job API that Flink and Spark job
servers speak. The user's flags reach every Beam component untouched; the
DoFns and the user's module file reach SDK workers in other processes.

Outputs are compared with the committed DirectRunner outputs of the same
executors on the same data (tests/testdata/taxi)."""

from __future__ import annotations

import csv
import glob
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conveyor import LocalRunner, Pipeline
from conveyor import schema as schema_lib
from conveyor.artifacts import Examples, ExampleStatistics, Schema, TransformCache, TransformGraph
from conveyor.components import CsvExampleGen, SchemaGen, StatisticsGen, statistics_gen, transform
from conveyor.components.base import ExecutionContext
from conveyor.components.transform import TransformParams
from tests.portable import PortableServices

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
TAXI = os.path.join(TESTDATA, "taxi")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_MODULE = os.path.join(REPO, "examples", "taxi", "taxi_utils.py")
PENGUIN_DATA = os.path.join(REPO, "examples", "penguin", "data")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    with PortableServices(str(tmp_path_factory.mktemp("portable_services"))) as running:
        yield running
    # Neither service nor any worker process of theirs is left running.
    assert running.leftover_processes() == []


class Ran:
    """Jobs the job service finished and workers the pool started while a block ran."""

    def __init__(self, services: PortableServices) -> None:
        self.services = services

    def __enter__(self) -> Ran:
        self.jobs_before = set(self.services.jobs())
        self.workers_before = self.services.workers_started()
        return self

    def __exit__(self, *exc) -> None:
        jobs = self.services.jobs()
        self.new_jobs = {j: s for j, s in jobs.items() if j not in self.jobs_before}
        self.new_workers = self.services.workers_started() - self.workers_before


def taxi_examples() -> Examples:
    with open(os.path.join(TAXI, "example_gen", "examples.json")) as f:
        record = json.load(f)
    return Examples(os.path.join(TAXI, "example_gen", "examples"),
                    properties=record["properties"], custom_properties=record["custom_properties"])


def load_stats(statistics: ExampleStatistics | str, split: str):
    uri = statistics if isinstance(statistics, str) else statistics.uri
    return schema_lib.load_statistics(os.path.join(uri, f"Split-{split}", "FeatureStats.pb"))


def counts(stats) -> dict[str, tuple[int, int]]:
    """feature -> (non-missing, missing): exact whatever the runner's bundling."""
    out = {}
    for feature in stats.datasets[0].features:
        typed = feature.num_stats if feature.HasField("num_stats") else feature.string_stats
        out[feature.path.step[0]] = (typed.common_stats.num_non_missing, typed.common_stats.num_missing)
    return out


def test_statistics_gen_runs_on_the_portable_runner(services, tmp_path):
    out = ExampleStatistics(str(tmp_path / "statistics"))
    os.makedirs(out.uri)
    examples = taxi_examples()
    with Ran(services) as ran:
        statistics_gen.run(
            {"examples": [examples]}, {"statistics": [out]}, statistics_gen.StatisticsGenParams(),
            ExecutionContext("statistics_gen", beam_pipeline_args=services.beam_args()),
        )
    # One job through the job service, computed by a worker process of the pool.
    assert list(ran.new_jobs.values()) == ["DONE"]
    assert ran.new_workers >= 1

    assert out.splits == ["train", "eval"]
    row_counts = json.loads(examples.get("row_counts"))
    assert row_counts == {"train": 9936, "eval": 5066}
    direct = os.path.join(TAXI, "statistics_gen", "statistics")
    for split in out.splits:
        stats = load_stats(out, split)
        assert stats.datasets[0].num_examples == row_counts[split]
        # Same per-feature counts as the DirectRunner's statistics of the same data.
        assert counts(stats) == counts(load_stats(direct, split))


def test_transform_runs_on_the_portable_runner(services, tmp_path):
    import tensorflow_transform as tft

    outputs = {
        "transform_graph": [TransformGraph(str(tmp_path / "transform_graph"))],
        "transformed_examples": [Examples(str(tmp_path / "transformed_examples"))],
        "updated_analyzer_cache": [TransformCache(str(tmp_path / "updated_analyzer_cache"))],
    }
    for artifacts in outputs.values():
        os.makedirs(artifacts[0].uri)
    examples = taxi_examples()
    with Ran(services) as ran:
        transform.run(
            {"examples": [examples], "schema": [Schema(os.path.join(TAXI, "schema_gen", "schema"))]},
            outputs, TransformParams(module_file=TAXI_MODULE),
            ExecutionContext("transform", tmp_dir=str(tmp_path / "tmp"),
                             beam_pipeline_args=services.beam_args()),
        )
    assert list(ran.new_jobs.values()) == ["DONE"]
    assert ran.new_workers >= 1

    graph_uri = outputs["transform_graph"][0].uri
    direct_graph = os.path.join(TAXI, "transform", "transform_graph")
    graph = tft.TFTransformOutput(graph_uri)
    direct = tft.TFTransformOutput(direct_graph)
    assert graph.transformed_feature_spec() == direct.transformed_feature_spec()
    # Vocabularies are full passes over the data in the workers: identical to the DirectRunner's.
    assets = sorted(os.listdir(os.path.join(graph_uri, "transform_fn", "assets")))
    assert assets == sorted(os.listdir(os.path.join(direct_graph, "transform_fn", "assets")))
    assert "company" in assets
    for name in assets:
        with open(os.path.join(graph_uri, "transform_fn", "assets", name), "rb") as f:
            with open(os.path.join(direct_graph, "transform_fn", "assets", name), "rb") as g:
                assert f.read() == g.read(), name

    transformed = outputs["transformed_examples"][0]
    assert transformed.splits == ["train", "eval"]
    row_counts = json.loads(examples.get("row_counts"))
    spec = graph.transformed_feature_spec()
    for split in transformed.splits:
        files = sorted(glob.glob(os.path.join(transformed.uri, f"Split-{split}", "data-*.parquet")))
        assert files, split
        table = pa.concat_tables([pq.read_table(f) for f in files])
        assert table.num_rows == row_counts[split]
        assert set(table.column_names) == set(spec)
        assert set(pc.list_value_length(table.column("fare_xf")).to_pylist()) == {1}


def test_local_runner_pipeline_on_the_portable_runner(services, tmp_path):
    example_gen = CsvExampleGen(input_base=PENGUIN_DATA)
    stats = StatisticsGen(examples=example_gen.outputs["examples"])
    schema = SchemaGen(statistics=stats.outputs["statistics"])
    pipeline = Pipeline("penguin_portable", str(tmp_path / "root"), [example_gen, stats, schema],
                        beam_pipeline_args=services.beam_args())
    with Ran(services) as ran:
        result = LocalRunner(echo=lambda _: None).run(pipeline)
    assert {n: r.state for n, r in result.nodes.items()} == {
        c.id: "COMPLETE" for c in (example_gen, stats, schema)
    }
    # CsvExampleGen and StatisticsGen are the Beam components here: a job each, through the service.
    assert list(ran.new_jobs.values()) == ["DONE", "DONE"]

    with open(os.path.join(PENGUIN_DATA, "penguins_processed.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    [statistics] = result.outputs(stats.id, "statistics")
    assert sum(load_stats(statistics, s).datasets[0].num_examples for s in statistics.splits) == len(rows)
    [inferred] = result.outputs(schema.id, "schema")
    assert {f.name for f in schema_lib.load(inferred.uri).feature} == set(rows[0])
