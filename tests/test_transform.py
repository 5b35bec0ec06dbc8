"""Transform on real ExampleGen + SchemaGen output of the taxi data, with the
taxi example's module file: the graph, the transformed examples, the analyzer
cache, a multi-process Beam run and the errors a user's module can cause."""

from __future__ import annotations

import csv
import glob
import itertools
import json
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from conveyor.artifacts import Examples, Schema, TransformCache, TransformGraph
from conveyor.components import transform
from conveyor.components.base import ExecutionContext
from conveyor.components.transform import SplitsConfig, Transform, TransformParams
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
TAXI = os.path.join(TESTDATA, "taxi")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_MODULE = os.path.join(REPO, "examples", "taxi", "taxi_utils.py")
MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

RAW_FEATURES = 18  # 17 features and the label `tips`
TRANSFORMED = {
    "trip_miles_xf", "fare_xf", "trip_seconds_xf",
    "pickup_latitude_xf", "pickup_longitude_xf", "dropoff_latitude_xf", "dropoff_longitude_xf",
    "payment_type_xf", "company_xf", "pickup_census_tract_xf", "dropoff_census_tract_xf",
    "pickup_community_area_xf", "dropoff_community_area_xf",
    "trip_start_hour_xf", "trip_start_day_xf", "trip_start_month_xf", "tips_xf",
}


def taxi_examples(uri: str | None = None) -> Examples:
    """The ExampleGen test data, optionally copied to `uri` first."""
    src = os.path.join(TAXI, "example_gen", "examples")
    with open(os.path.join(TAXI, "example_gen", "examples.json")) as f:
        record = json.load(f)
    if uri:
        shutil.copytree(src, uri)
    return Examples(uri or src, properties=record["properties"],
                    custom_properties=record["custom_properties"])


def taxi_schema() -> Schema:
    return Schema(os.path.join(TAXI, "schema_gen", "schema"))


def run_transform(out_dir, params: TransformParams, *, examples: Examples | None = None,
                  cache: TransformCache | None = None, beam_args: list[str] | None = None) -> dict:
    outputs = {
        "transform_graph": [TransformGraph(os.path.join(out_dir, "transform_graph"))],
        "transformed_examples": [Examples(os.path.join(out_dir, "transformed_examples"))],
        "updated_analyzer_cache": [TransformCache(os.path.join(out_dir, "updated_analyzer_cache"))],
    }
    for artifacts in outputs.values():
        os.makedirs(artifacts[0].uri)
    inputs = {"examples": [examples or taxi_examples()], "schema": [taxi_schema()]}
    if cache is not None:
        inputs["analyzer_cache"] = [cache]
    ctx = ExecutionContext("transform", tmp_dir=os.path.join(out_dir, "tmp"),
                           beam_pipeline_args=list(beam_args or []))
    transform.run(inputs, outputs, params, ctx)
    return {key: artifacts[0] for key, artifacts in outputs.items()}


def read_examples(examples: Examples, split: str) -> list[dict[str, list]]:
    """Each row of a split as {feature: its values}, from either file format."""
    if examples.get("file_format") == "parquet":
        files = sorted(glob.glob(os.path.join(examples.uri, f"Split-{split}", "data-*.parquet")))
        assert files, f"no data files in split {split}"
        return [row for path in files for row in pq.read_table(path).to_pylist()]
    files = sorted(glob.glob(os.path.join(examples.uri, f"Split-{split}", "data-*.gz")))
    assert files, f"no data files in split {split}"
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        rows.append({name: list(getattr(feature, feature.WhichOneof("kind")).value)
                     for name, feature in example.features.feature.items()})
    return rows


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Transform on a copy of the taxi examples, with Beam in 2 worker processes."""
    base = tmp_path_factory.mktemp("first")
    examples = taxi_examples(str(base / "examples"))
    outputs = run_transform(str(base / "out"), TransformParams(module_file=TAXI_MODULE),
                            examples=examples, beam_args=MULTI_PROCESS)
    return examples, outputs


def csv_examples(spec: dict, rows: int, *, drop: tuple[str, ...] = ()) -> tuple[list[bytes], list[dict]]:
    """The first `rows` rows of the raw taxi CSV as serialized tf.Examples,
    typed by a raw feature spec; empty fields are left out, as in the data."""
    with open(os.path.join(REPO, "examples", "taxi", "data", "data.csv"), newline="") as f:
        records = list(itertools.islice(csv.DictReader(f), rows))
    serialized = []
    for record in records:
        feature = {}
        for name, value in record.items():
            if value == "" or name in drop:
                continue
            dtype = spec[name].dtype
            if dtype == tf.string:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
            elif dtype == tf.int64:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(float(value))]))
            else:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return serialized, records


def test_graph_loads_with_tft_and_transforms_raw_features(first_run):
    _, outputs = first_run
    tft_output = tft.TFTransformOutput(outputs["transform_graph"].uri)
    assert set(tft_output.transformed_feature_spec()) == TRANSFORMED
    assert len(tft_output.raw_feature_spec()) == RAW_FEATURES
    # The vocabulary of payment types was computed over the train split.
    assert {b"Cash", b"Credit Card"} <= set(tft_output.vocabulary_by_name("payment_type"))
    # Raw rows with missing values go through the graph; the label is computed.
    spec = tft_output.raw_feature_spec()
    serialized, records = csv_examples(spec, 50)
    transformed = tft_output.transform_features_layer()(tf.io.parse_example(serialized, spec))
    expected = [int(float(r["tips"]) > 0.2 * float(r["fare"])) for r in records]
    assert transformed["tips_xf"].numpy().tolist() == expected
    assert transformed["fare_xf"].shape == (50,)
    assert transformed["company_xf"].dtype == tf.int64


def test_transformed_examples_for_every_split(first_run):
    examples, outputs = first_run
    out = outputs["transformed_examples"]
    assert out.splits == ["train", "eval"]
    assert out.get("file_format") == "parquet"
    assert out.properties["span"] == examples.properties["span"]
    assert out.properties["version"] == examples.properties["version"]
    rows = json.loads(examples.get("row_counts"))
    for split in ("train", "eval"):
        records = read_examples(out, split)
        assert len(records) == rows[split]
        assert set(records[0]) == TRANSFORMED
        labels = {r["tips_xf"][0] for r in records}
        assert labels == {0, 1}
        # Each split's own rows: its labels are those of its raw rows.
        raw = [(r["tips"], r["fare"]) for r in read_examples(examples, split)]
        positives = sum(tips is not None and fare is not None  # in float32, as the graph computes
                        and np.float32(tips) > np.float32(fare) * np.float32(0.2) for tips, fare in raw)
        assert sum(r["tips_xf"][0] for r in records) == positives
    # The columns are what tf.Transform's own conversion of its outputs gives.
    graph = tft.TFTransformOutput(outputs["transform_graph"].uri)
    path = glob.glob(os.path.join(out.uri, "Split-eval", "*.parquet"))[0]
    assert pq.read_schema(path).remove_metadata() == transform._output_arrow_schema(
        graph.transformed_metadata.schema)


def test_every_split_is_transformed_with_one_load_of_the_graph(tmp_path, monkeypatch):
    from tensorflow_transform.beam import impl

    loads = []
    original = impl._RunMetaGraphDoFn._make_graph_state

    def counted(self, saved_model_dir):
        loads.append(saved_model_dir)
        return original(self, saved_model_dir)

    monkeypatch.setattr(impl._RunMetaGraphDoFn, "_make_graph_state", counted)
    examples = taxi_examples()
    outputs = run_transform(str(tmp_path / "out"), TransformParams(module_file=TAXI_MODULE), examples=examples)
    # One graph for the analysis, one for transforming both splits.
    assert len(loads) == 2 and len(set(loads)) == 2
    rows = json.loads(examples.get("row_counts"))
    for split in ("train", "eval"):
        assert len(read_examples(outputs["transformed_examples"], split)) == rows[split]


def test_analyzer_cache_is_written_and_reused(first_run, tmp_path):
    examples, outputs = first_run
    cache = outputs["updated_analyzer_cache"]
    assert any(name.startswith("split-train-") for name in os.listdir(cache.uri))
    assert glob.glob(os.path.join(cache.uri, "*", "MANIFEST"))
    # Cut the data at the same URI down to 30 rows of one payment type: if the
    # cache is used, the vocabulary still holds every payment type of the
    # first run; if the data were analyzed again it could not.
    for path in glob.glob(os.path.join(examples.uri, "Split-train", "*.parquet")):
        table = pq.read_table(path)
        table = table.filter(pc.equal(table.column("payment_type"), "Cash")).slice(0, 30)
        pq.write_table(table, path)
    second = run_transform(str(tmp_path / "second"), TransformParams(module_file=TAXI_MODULE),
                           examples=examples, cache=cache)
    first_vocab = tft.TFTransformOutput(outputs["transform_graph"].uri).vocabulary_by_name("payment_type")
    second_vocab = tft.TFTransformOutput(second["transform_graph"].uri).vocabulary_by_name("payment_type")
    assert len(first_vocab) > 1
    assert second_vocab == first_vocab
    # The new cache holds what the next run needs too.
    assert sorted(os.listdir(second["updated_analyzer_cache"].uri)) == sorted(os.listdir(cache.uri))


def test_custom_config_and_splits_config(tmp_path):
    module = tmp_path / "prep.py"
    module.write_text(
        "import tensorflow as tf\n"
        "import tensorflow_transform as tft\n\n"
        "def preprocessing_fn(inputs, custom_config):\n"
        "    fare = tf.sparse.to_dense(inputs['fare']) if isinstance(inputs['fare'], tf.SparseTensor)"
        " else inputs['fare']\n"
        "    return {'fare_scaled': tft.scale_by_min_max(tf.squeeze(fare, 1)) * custom_config['factor']}\n"
    )
    # tf.Example output, as TFX writes it.
    params = TransformParams(module_file=str(module), custom_config={"factor": 10.0},
                             splits_config=SplitsConfig(analyze=["train"], transform=["eval"]),
                             output_file_format="tfrecords_gzip")
    outputs = run_transform(str(tmp_path / "out"), params)
    out = outputs["transformed_examples"]
    assert out.splits == ["eval"]
    assert out.get("file_format") == "tfrecords_gzip"
    assert not os.path.exists(os.path.join(out.uri, "Split-train"))
    values = [r["fare_scaled"][0] for r in read_examples(out, "eval")]
    assert max(values) > 1.0 and min(values) >= 0.0  # scaled to [0, 10] over train


def test_module_with_syntax_error_names_file_and_line(tmp_path):
    module = tmp_path / "broken.py"
    module.write_text("import tensorflow as tf\n\ndef preprocessing_fn(inputs):\n    return {x: for x}\n")
    with pytest.raises(ExecutorError) as e:
        run_transform(str(tmp_path / "out"), TransformParams(module_file=str(module)))
    assert str(module) in str(e.value) and "line 4" in str(e.value)
    assert not os.listdir(tmp_path / "out" / "transform_graph")


def test_module_without_preprocessing_fn(tmp_path):
    module = tmp_path / "nofn.py"
    module.write_text("def preprocesing_fn(inputs):\n    return inputs\n")
    with pytest.raises(ExecutorError, match="no function 'preprocessing_fn'.*preprocesing_fn"):
        run_transform(str(tmp_path / "out"), TransformParams(module_file=str(module)))


def test_preprocessing_fn_bug_is_reported_with_its_line(tmp_path):
    module = tmp_path / "bug.py"
    module.write_text("def preprocessing_fn(inputs):\n    return {'x': inputs['no_such_feature']}\n")
    with pytest.raises(ExecutorError) as e:
        run_transform(str(tmp_path / "out"), TransformParams(module_file=str(module)))
    message = str(e.value)
    assert "line 2" in message and "no_such_feature" in message and "trip_miles" in message


def test_unknown_split_is_an_error(tmp_path):
    params = TransformParams(module_file=TAXI_MODULE, splits_config=SplitsConfig(analyze=["training"]))
    with pytest.raises(ExecutorError, match=r"splits_config.analyze names split\(s\) \['training'\]"):
        run_transform(str(tmp_path / "out"), params)


def test_component_needs_exactly_one_code_source():
    examples, schema = Channel(Examples), Channel(Schema)
    with pytest.raises(PipelineDefinitionError, match="exactly one of module_file"):
        Transform(examples=examples, schema=schema)
    with pytest.raises(PipelineDefinitionError, match="got both"):
        Transform(examples=examples, schema=schema, module_file=TAXI_MODULE, preprocessing_fn="a.b.c")
    with pytest.raises(PipelineDefinitionError, match=r"output_file_format 'parquett'.*'parquet'"):
        Transform(examples=examples, schema=schema, module_file=TAXI_MODULE, output_file_format="parquett")
    component = Transform(examples=examples, schema=schema, module_file=TAXI_MODULE)
    assert component.code_files() == [TAXI_MODULE]
    assert set(component.outputs) == {"transform_graph", "transformed_examples", "updated_analyzer_cache"}
    assert Transform.INPUTS["analyzer_cache"].optional and not Transform.INPUTS["analyzer_cache"].in_cache_key


def test_reads_tfrecord_examples(tmp_path):
    # Transform's own output (gzipped tf.Example) as input, with its schema.
    base = os.path.join(TAXI, "transform")
    with open(os.path.join(base, "transformed_examples.json")) as f:
        record = json.load(f)
    examples = Examples(os.path.join(base, record["uri"]), properties=record["properties"],
                        custom_properties=record["custom_properties"])
    schema = Schema(os.path.join(base, "transform_graph", "transformed_metadata"))
    module = tmp_path / "again.py"
    module.write_text(
        "import tensorflow_transform as tft\n\n"
        "def preprocessing_fn(inputs):\n"
        "    return {'fare_again': tft.scale_to_0_1(inputs['fare_xf']), 'label': inputs['tips_xf']}\n"
    )
    outputs = {
        "transform_graph": [TransformGraph(str(tmp_path / "graph"))],
        "transformed_examples": [Examples(str(tmp_path / "examples"))],
        "updated_analyzer_cache": [TransformCache(str(tmp_path / "cache"))],
    }
    for artifacts in outputs.values():
        os.makedirs(artifacts[0].uri)
    transform.run({"examples": [examples], "schema": [schema]}, outputs,
                  TransformParams(module_file=str(module)),
                  ExecutionContext("transform", tmp_dir=str(tmp_path / "tmp")))
    rows = read_examples(outputs["transformed_examples"][0], "train")
    values = [r["fare_again"][0] for r in rows]
    assert len(rows) == len(read_examples(examples, "train"))
    assert min(values) == 0.0 and max(values) == 1.0  # scaled over the train split itself


def test_cache_files_are_what_tft_default_sink_and_source_use(tmp_path):
    # Caches written before Conveyor wrote its own (by tf.Transform's
    # default sink, Beam's WriteToTFRecord) still read, and tf.Transform's
    # default source (ReadFromTFRecord) reads Conveyor's, empty entries too.
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    records = [b"entry-%d" % i for i in range(5)]
    with beam.Pipeline() as p:
        _ = p | beam.Create(records) | beam.io.WriteToTFRecord(str(tmp_path / "tft" / "0"), file_name_suffix=".gz")
    assert sorted(transform._read_cache_files(str(tmp_path / "tft" / "0-*-of-*"))) == records

    transform._write_cache_file(str(tmp_path / "ours" / "0"), iter([*records, None]))
    transform._write_cache_file(str(tmp_path / "ours" / "1"), iter([None]))
    assert sorted(transform._read_cache_files(str(tmp_path / "ours" / "0-*-of-*"))) == records
    with beam.Pipeline() as p:
        full = p | "Full" >> beam.io.ReadFromTFRecord(str(tmp_path / "ours" / "0-*-of-*"))
        empty = p | "Empty" >> beam.io.ReadFromTFRecord(str(tmp_path / "ours" / "1-*-of-*"))
        assert_that(full, equal_to(records), label="FullHasEveryRecord")
        assert_that(empty, equal_to([]), label="EmptyHasNone")


def test_written_examples_are_gzip_members_every_reader_reads(tmp_path):
    # Transform writes each batch as its own gzip member; a file of several
    # (one bundle, several batches) must read whole in TensorFlow, Beam and
    # Conveyor's own reader. An empty batch adds no member: TensorFlow's
    # reader would stop at an empty one.
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from conveyor.components import examples_io

    batches = [[b"a%d" % i for i in range(1000)], [], [b"b%d" % i for i in range(7)]]
    records = [r for batch in batches for r in batch]
    with beam.Pipeline() as p:
        members = p | beam.Create([examples_io.gzip_records(b) for b in batches], reshuffle=False)
        _ = examples_io.beam_write_framed(members, str(tmp_path / "split"), label="Write")
    assert examples_io.gzip_records([]) == b""
    files = sorted(glob.glob(str(tmp_path / "split" / "data-*.gz")))
    assert len(files) == 1
    with open(files[0], "rb") as f:
        assert f.read().count(b"\x1f\x8b\x08") == 2  # two gzip members in one file
        f.seek(0)
        assert list(examples_io.read_tfrecords(f)) == records
    read_by_tf = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert read_by_tf == records
    with beam.Pipeline() as p:
        assert_that(p | beam.io.ReadFromTFRecord(files[0]), equal_to(records))
