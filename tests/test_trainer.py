"""Trainer on real Transform output (tests/testdata/taxi/transform) with the
taxi example's module file; the exported model is served raw tf.Examples.
Also: raw Parquet examples through the DataAccessor, the penguin example end
to end, and the errors a user's run_fn can cause."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from conveyor import schema as schema_lib
from conveyor.artifacts import Examples, Model, ModelRun, Schema, TransformCache, TransformGraph
from conveyor.components import trainer, transform
from conveyor.components.base import ExecutionContext, skip_autograph_for_libraries
from conveyor.components.fn_args import DataAccessor, FnArgs
from conveyor.components.trainer import EvalArgs, TrainArgs, Trainer, TrainerParams
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel
from tests.test_transform import REPO, TAXI, TAXI_MODULE, csv_examples, taxi_examples, taxi_schema

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
PENGUIN = os.path.join(TESTDATA, "penguin")
PENGUIN_MODULE = os.path.join(REPO, "examples", "penguin", "penguin_utils.py")


def load_artifact(cls, base: str, name: str):
    with open(os.path.join(base, f"{name}.json")) as f:
        record = json.load(f)
    return cls(os.path.join(base, record["uri"]), properties=record["properties"],
               custom_properties=record["custom_properties"])


def transformed_examples() -> Examples:
    return load_artifact(Examples, os.path.join(TAXI, "transform"), "transformed_examples")


def taxi_graph() -> TransformGraph:
    return TransformGraph(os.path.join(TAXI, "transform", "transform_graph"))


def run_trainer(out_dir, params: TrainerParams, inputs: dict | None = None) -> dict:
    outputs = {"model": [Model(os.path.join(out_dir, "model"))],
               "model_run": [ModelRun(os.path.join(out_dir, "model_run"))]}
    for artifacts in outputs.values():
        os.makedirs(artifacts[0].uri)
    if inputs is None:
        inputs = {"examples": [transformed_examples()], "transform_graph": [taxi_graph()],
                  "schema": [taxi_schema()]}
    trainer.run(inputs, outputs, params, ExecutionContext("trainer"))
    return {key: artifacts[0] for key, artifacts in outputs.items()}


def write_module(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_taxi_model_serves_raw_examples(tmp_path):
    params = TrainerParams(module_file=TAXI_MODULE, train_args=TrainArgs(num_steps=50),
                           eval_args=EvalArgs(num_steps=5), hyperparameters={"batch_size": 32})
    outputs = run_trainer(str(tmp_path), params)
    serving_dir = os.path.join(outputs["model"].uri, "Format-Serving")
    assert os.path.isfile(os.path.join(serving_dir, "saved_model.pb"))
    # TensorBoard logs went to the ModelRun artifact.
    assert any("events.out.tfevents" in f for _, _, files in os.walk(outputs["model_run"].uri) for f in files)

    model = tf.saved_model.load(serving_dir)
    assert {"serving_default", "transform_features"} <= set(model.signatures)
    spec = tft.TFTransformOutput(taxi_graph().uri).raw_feature_spec()
    # Serving requests carry no label; empty CSV fields are absent features.
    serialized, records = csv_examples(spec, 40, drop=("tips",))
    assert any(r["pickup_latitude"] == "" for r in records)
    predictions = model.signatures["serving_default"](examples=tf.constant(serialized))["outputs"].numpy()
    assert predictions.shape == (40, 1)
    assert np.all((predictions >= 0) & (predictions <= 1))
    # transform_features (TFMA's preprocessing) gives the label from raw rows.
    with_label, _ = csv_examples(spec, 40)
    features = model.signatures["transform_features"](examples=tf.constant(with_label))
    assert features["tips_xf"].shape == (40,)


def test_fn_args_are_what_tfx_modules_use(tmp_path):
    module = write_module(tmp_path, "probe.py", (
        "import json, os\n"
        "import tensorflow as tf\n"
        "from tfx_bsl.public import tfxio\n"
        "import tensorflow_transform as tft\n\n"
        "def run_fn(fn_args):\n"
        "    tft_output = tft.TFTransformOutput(fn_args.transform_output)\n"
        "    ds = fn_args.data_accessor.tf_dataset_factory(fn_args.train_files,\n"
        "        tfxio.TensorFlowDatasetOptions(batch_size=8, label_key='tips_xf'),\n"
        "        tft_output.transformed_metadata.schema)\n"
        "    features, label = next(iter(ds))\n"
        "    record = {k: v for k, v in vars(fn_args).items() if k != 'data_accessor'}\n"
        "    record['batch'] = {k: list(v.shape) for k, v in features.items()}\n"
        "    record['label'] = list(label.shape)\n"
        "    with open(os.path.join(fn_args.model_run_dir, 'args.json'), 'w') as f:\n"
        "        json.dump(record, f)\n"
        "    m = tf.Module()\n"
        "    m.v = tf.Variable(1.0)\n"
        "    tf.saved_model.save(m, fn_args.serving_model_dir)\n"
    ))
    params = TrainerParams(module_file=module, train_args=TrainArgs(num_steps=7), eval_args=EvalArgs(3),
                           custom_config={"k": 1}, hyperparameters={"lr": 0.1})
    outputs = run_trainer(str(tmp_path / "out"), params)
    with open(os.path.join(outputs["model_run"].uri, "args.json")) as f:
        args = json.load(f)
    examples = transformed_examples()
    assert args["train_files"] == [os.path.join(examples.uri, "Split-train", "data-*.gz")]
    assert args["eval_files"] == [os.path.join(examples.uri, "Split-eval", "data-*.gz")]
    assert (args["train_steps"], args["eval_steps"]) == (7, 3)
    assert args["transform_output"] == args["transform_graph_path"] == taxi_graph().uri
    assert args["schema_path"] == args["schema_file"] == os.path.join(taxi_schema().uri, "schema.pbtxt")
    assert args["serving_model_dir"] == os.path.join(outputs["model"].uri, "Format-Serving")
    assert args["model_run_dir"] == outputs["model_run"].uri
    assert args["custom_config"] == {"k": 1} and args["hyperparameters"] == {"lr": 0.1}
    assert args["base_model"] is None
    assert args["label"] == [8] and args["batch"]["fare_xf"] == [8] and "tips_xf" not in args["batch"]


def test_data_accessor_reads_raw_parquet_examples():
    examples = taxi_examples()
    schema = schema_lib.load(taxi_schema().uri)
    accessor = DataAccessor(examples.get("file_format"))
    pattern = os.path.join(examples.uri, "Split-eval", "data-*.parquet")
    options = tfxio.TensorFlowDatasetOptions(batch_size=16, label_key="tips", num_epochs=1)
    batches = list(accessor.tf_dataset_factory([pattern], options, schema))
    rows = json.loads(examples.get("row_counts"))["eval"]
    assert sum(int(label.shape[0]) for _, label in batches) == rows
    features, label = batches[0]
    assert label.shape == (16, 1) and label.dtype == tf.float32
    # Autotuning off: with it on, destroying the iterator at the end of a fit
    # waits for the autotuner's sleep (seconds; see DataAccessor).
    dataset = accessor.tf_dataset_factory([pattern], options, schema)
    assert dataset.options().autotune.enabled is False
    assert features["fare"].shape == (16, 1)  # always present: dense
    assert isinstance(features["pickup_latitude"], tf.SparseTensor)  # sometimes missing
    assert features["company"].dtype == tf.string
    record_batches = list(accessor.record_batch_factory(
        pattern, tfxio.RecordBatchesOptions(batch_size=1000, num_epochs=1), schema))
    assert sum(b.num_rows for b in record_batches) == rows


def _rows(accessor, pattern, schema, **options) -> list[list[tuple]]:
    """Each batch's rows as (trip_start_timestamp, fare, trip_seconds)."""
    dataset = accessor.tf_dataset_factory(
        [pattern], tfxio.TensorFlowDatasetOptions(batch_size=64, **options), schema)
    keys = ("trip_start_timestamp", "fare", "trip_seconds")
    batches = []
    for features in dataset:
        columns = [tf.sparse.to_dense(features[k]) if isinstance(features[k], tf.SparseTensor) else features[k]
                   for k in keys]
        batches.append([tuple(row) for row in np.concatenate([c.numpy().reshape(-1, 1) for c in columns], 1)])
    return batches


def test_data_accessor_shuffles_rows_in_blocks_of_the_buffer_and_anew_each_pass():
    examples = taxi_examples()
    schema = schema_lib.load(taxi_schema().uri)
    accessor = DataAccessor(examples.get("file_format"))
    pattern = os.path.join(examples.uri, "Split-eval", "data-*.parquet")
    rows = json.loads(examples.get("row_counts"))["eval"]
    in_order = [r for b in _rows(accessor, pattern, schema, num_epochs=1, shuffle=False) for r in b]
    assert len(in_order) == rows
    two = _rows(accessor, pattern, schema, num_epochs=2, shuffle_seed=7, shuffle_buffer_size=1000)
    assert [len(b) for b in two] == [64] * (2 * rows // 64) + ([2 * rows % 64] if 2 * rows % 64 else [])
    flat = [r for b in two for r in b]
    first, second = flat[:rows], flat[rows:]
    assert sorted(first) == sorted(second) == sorted(in_order)  # every row once per pass
    assert first != in_order and second != first  # shuffled, and differently each pass
    # Within a block of the buffer's size: the first 1,000 rows are the file's first 1,000.
    assert sorted(first[:1000]) == sorted(in_order[:1000])
    assert _rows(accessor, pattern, schema, num_epochs=2, shuffle_seed=7, shuffle_buffer_size=1000) == two
    other_seed = _rows(accessor, pattern, schema, num_epochs=1, shuffle_seed=8, shuffle_buffer_size=1000)
    assert [r for b in other_seed for r in b] != first


def test_penguin_transform_and_trainer(tmp_path):
    examples = load_artifact(Examples, os.path.join(PENGUIN, "example_gen"), "examples")
    schema = Schema(os.path.join(PENGUIN, "schema_gen", "schema"))
    graph = TransformGraph(str(tmp_path / "graph"))
    transformed = Examples(str(tmp_path / "transformed"))
    cache = TransformCache(str(tmp_path / "cache"))
    for a in (graph, transformed, cache):
        os.makedirs(a.uri)
    transform.run({"examples": [examples], "schema": [schema]},
                  {"transform_graph": [graph], "transformed_examples": [transformed],
                   "updated_analyzer_cache": [cache]},
                  transform.TransformParams(module_file=PENGUIN_MODULE),
                  ExecutionContext("transform", tmp_dir=str(tmp_path / "tmp")))
    outputs = run_trainer(str(tmp_path / "train"), TrainerParams(
        module_file=PENGUIN_MODULE, train_args=TrainArgs(num_steps=100), eval_args=EvalArgs(num_steps=5)),
        inputs={"examples": [transformed], "transform_graph": [graph], "schema": [schema]})
    model = tf.saved_model.load(os.path.join(outputs["model"].uri, "Format-Serving"))
    import csv

    with open(os.path.join(REPO, "examples", "penguin", "data", "penguins_processed.csv")) as f:
        rows = list(csv.DictReader(f))
    rows = rows[::10]
    serialized = [
        tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
            for k, v in row.items() if k != "species"
        })).SerializeToString()
        for row in rows
    ]
    probabilities = model.signatures["serving_default"](examples=tf.constant(serialized))["outputs"].numpy()
    assert probabilities.shape == (len(rows), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(probabilities.argmax(axis=1) == [int(r["species"]) for r in rows])
    assert accuracy > 0.8


def test_run_fn_that_saves_nothing_is_an_error(tmp_path):
    module = write_module(tmp_path, "lazy.py", "def run_fn(fn_args):\n    pass\n")
    with pytest.raises(ExecutorError, match="without saving a model.*saved_model.pb.*model.save"):
        run_trainer(str(tmp_path / "out"), TrainerParams(module_file=module))


def test_module_without_run_fn_is_an_error(tmp_path):
    module = write_module(tmp_path, "nofn.py", "def trainer_fn(fn_args):\n    pass\n")
    with pytest.raises(ExecutorError, match="no function 'run_fn'"):
        run_trainer(str(tmp_path / "out"), TrainerParams(module_file=module))
    broken = write_module(tmp_path, "broken.py", "def run_fn(fn_args)\n    pass\n")
    with pytest.raises(ExecutorError, match="line 1"):
        run_trainer(str(tmp_path / "out2"), TrainerParams(module_file=broken))


def test_unknown_split_is_an_error(tmp_path):
    params = TrainerParams(module_file=TAXI_MODULE, train_args=TrainArgs(num_steps=1, splits=["training"]))
    with pytest.raises(ExecutorError, match=r"train_args.splits names split 'training'"):
        run_trainer(str(tmp_path / "out"), params)


def test_run_fn_by_import_path(tmp_path, monkeypatch):
    package = tmp_path / "mytrainer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "code.py").write_text(
        "import tensorflow as tf\n\n"
        "def run_fn(fn_args):\n"
        "    m = tf.Module()\n"
        "    m.steps = tf.Variable(fn_args.train_steps)\n"
        "    tf.saved_model.save(m, fn_args.serving_model_dir)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    outputs = run_trainer(str(tmp_path / "out"), TrainerParams(run_fn="mytrainer.code.run_fn",
                                                               train_args=TrainArgs(num_steps=3)))
    assert tf.saved_model.load(os.path.join(outputs["model"].uri, "Format-Serving")).steps.numpy() == 3


def test_component_checks():
    examples = Channel(Examples)
    with pytest.raises(PipelineDefinitionError, match="exactly one of module_file"):
        Trainer(examples=examples)
    with pytest.raises(PipelineDefinitionError, match="num_steps must be positive"):
        Trainer(examples=examples, module_file=TAXI_MODULE, train_args=TrainArgs(num_steps=0))
    component = Trainer(examples=examples, module_file=TAXI_MODULE, train_args=TrainArgs(num_steps=10))
    assert component.code_files() == [TAXI_MODULE]
    assert set(component.outputs) == {"model", "model_run"}
    assert isinstance(FnArgs().custom_config, dict)


def test_autograph_leaves_keras_and_tft_code_alone():
    # Converting tf_keras' or tf.Transform's code costs seconds per exported
    # signature and changes nothing; the user's own functions are converted.
    import tf_keras
    from tensorflow.python.autograph.impl import conversion
    from tensorflow_transform.output_wrapper import TransformFeaturesLayer

    skip_autograph_for_libraries()
    skip_autograph_for_libraries()  # twice adds nothing
    assert conversion.is_allowlisted(TransformFeaturesLayer.call)
    assert conversion.is_allowlisted(tf_keras.layers.Dense.call)

    def users_fn(x):
        return x

    assert not conversion.is_allowlisted(users_fn)
    from tensorflow.python.autograph.core import config as autograph_config

    prefixes = [getattr(rule, "_prefix", None) for rule in autograph_config.CONVERSION_RULES]
    assert prefixes.count("tensorflow_transform") == 1 and prefixes.count("tf_keras") == 1
