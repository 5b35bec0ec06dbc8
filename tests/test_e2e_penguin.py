"""The penguin example end to end: a three-class model blessed, pushed and
answering raw rows."""

from __future__ import annotations

import csv
import os

import pytest

from conveyor import LocalRunner
from tests.examples import example_dir, load_example

PENGUIN = example_dir("penguin")


@pytest.mark.parametrize("examples_format", ["parquet", "tfrecords_gzip"])
def test_penguin_pipeline_pushes_a_model_that_classifies_raw_rows(tmp_path, examples_format):
    import tensorflow as tf

    penguin = load_example("penguin")
    pipeline = penguin.create_pipeline(str(tmp_path / "root"), examples_format=examples_format)
    result = LocalRunner(echo=print).run(pipeline)
    assert result.outputs("csv_example_gen", "examples")[0].get("file_format") == examples_format
    assert all(n.state == "COMPLETE" for n in result.nodes.values())
    [pushed] = result.outputs("pusher", "pushed_model")
    assert pushed.get("pushed") == 1

    with open(os.path.join(PENGUIN, "data", "penguins_processed.csv")) as f:
        rows = list(csv.DictReader(f))[:20]
    examples = []
    for row in rows:
        feats = {
            k: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
            for k, v in row.items() if k != "species"
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    model = tf.saved_model.load(pushed.get("pushed_destination"))
    [scores] = model.signatures["serving_default"](examples=tf.constant(examples)).values()
    assert scores.shape == (20, 3)
    predicted = scores.numpy().argmax(axis=1)
    accuracy = (predicted == [int(r["species"]) for r in rows]).mean()
    assert accuracy >= 0.6
