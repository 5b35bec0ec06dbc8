"""The taxi pipeline with its root and its input data on S3 (a real S3 server,
moto, on loopback), run as a user runs it: `conveyor run` with the standard
AWS environment. Every artifact lands in the bucket, the pushed model loads
from s3:// and predicts on raw CSV rows, lineage names the s3:// URIs, the
metadata store sits in the user's state directory, and a second run is
fully cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.examples import REPO, example_dir, node_states

TAXI = example_dir("taxi")
PIPELINE = os.path.join(TAXI, "pipeline.py")
BUCKET = "conveyor-taxi"
ROOT = f"s3://{BUCKET}/taxi"
DATA = f"s3://{BUCKET}/input/taxi"


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("s3_taxi")
    s3_server.bucket(BUCKET)
    s3_server.upload_dir(os.path.join(TAXI, "data"), DATA)
    env = {
        **os.environ,
        **s3_server.env,
        "XDG_STATE_HOME": str(base / "state"),
        "CONVEYOR_TAXI_ROOT": ROOT,
        "CONVEYOR_TAXI_DATA": DATA,
        "CONVEYOR_TAXI_TRAIN_STEPS": "100",
        "CONVEYOR_TAXI_EVAL_STEPS": "20",
    }

    def conveyor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "conveyor.cli", *args], env=env, cwd=REPO,
            capture_output=True, text=True, timeout=900,
        )

    first = conveyor("run", PIPELINE)
    return {"first": first, "conveyor": conveyor, "env": env, "base": base,
            "metadata": str(base / "state" / "conveyor" / "taxi" / "metadata.sqlite")}


def test_run_completes_with_metadata_in_the_state_dir(s3_run):
    first = s3_run["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    states = node_states(first.stdout)
    assert {k for k, s in states.items() if s == "COMPLETE"} == {
        "csv_example_gen", "statistics_gen", "schema_gen", "example_validator", "transform",
        "trainer", "evaluator", "pusher",
    }, first.stdout
    assert f"root {ROOT}, metadata {s3_run['metadata']}" in first.stdout
    assert os.path.isfile(s3_run["metadata"])
    # Nothing was written to a local folder named after the URI.
    assert not os.path.exists(os.path.join(REPO, "s3:"))


def test_every_artifact_is_in_the_bucket(s3_run, s3_server):
    from conveyor.metadata.store import Metadata

    md = Metadata(s3_run["metadata"])
    keys = set(s3_server.keys(BUCKET, "taxi/"))
    artifacts = md.store.get_artifacts()
    produced = [a for a in artifacts if a.uri.startswith(ROOT)]
    assert len(produced) >= 10
    for a in artifacts:
        assert a.uri.startswith("s3://"), a.uri
    for a in produced:
        prefix = a.uri[len(f"s3://{BUCKET}/"):]
        # Each published artifact is whole: its marker object was written last.
        assert f"{prefix}/.conveyor-complete" in keys, a.uri
    assert any(k.endswith("Split-train/FeatureStats.pb") for k in keys)
    assert any(k.endswith("Format-Serving/saved_model.pb") for k in keys)
    assert any(k.endswith("transform_fn/saved_model.pb") for k in keys)


def test_pushed_model_loads_from_s3_and_predicts_raw_rows(s3_run, tmp_path):
    from conveyor.artifacts import PushedModel
    from conveyor.metadata.store import Metadata

    md = Metadata(s3_run["metadata"])
    [pushed] = [a for a in md.artifacts_of_type(PushedModel) if a.get("pushed") == 1]
    destination = pushed.get("pushed_destination")
    assert destination.startswith(f"{ROOT}/serving_model/")
    # TensorFlow reads s3:// through tensorflow-io, which aborts the process at
    # exit (tensorflow/io#2039): predict in a child that exits by os._exit.
    script = tmp_path / "predict.py"
    script.write_text(textwrap.dedent(f"""
        import csv, json, os, sys
        import tensorflow as tf
        from conveyor import fs
        fs.enable_tensorflow([{destination!r}])
        model = tf.saved_model.load({destination!r})
        serve = model.signatures["serving_default"]
        rows = list(csv.DictReader(open({os.path.join(TAXI, "data", "data.csv")!r})))[:8]
        ints = {{"trip_start_hour", "trip_start_day", "trip_start_month", "trip_start_timestamp",
                 "pickup_community_area", "dropoff_community_area", "pickup_census_tract",
                 "dropoff_census_tract", "trip_seconds"}}
        floats = {{"fare", "trip_miles", "pickup_latitude", "pickup_longitude",
                   "dropoff_latitude", "dropoff_longitude"}}
        examples = []
        for row in rows:
            feats = {{}}
            for name, value in row.items():
                if name == "tips" or value == "":
                    continue
                if name in ints:
                    f = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(float(value))]))
                elif name in floats:
                    f = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
                else:
                    f = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
                feats[name] = f
            examples.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
        [probabilities] = serve(examples=tf.constant(examples)).values()
        print("PREDICTIONS", json.dumps(probabilities.numpy().ravel().tolist()), flush=True)
        os._exit(0)
    """))
    out = subprocess.run([sys.executable, str(script)], env=s3_run["env"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("PREDICTIONS ")]
    values = json.loads(line.split(" ", 1)[1])
    assert len(values) == 8
    assert all(0.0 <= v <= 1.0 for v in values)


def test_lineage_names_the_s3_uris(s3_run):
    out = s3_run["conveyor"]("lineage", PIPELINE, "--metadata", s3_run["metadata"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PushedModel #")
    assert f"{ROOT}/pusher/pushed_model/" in out.stdout
    assert f"{ROOT}/trainer/model/" in out.stdout
    assert f"{ROOT}/csv_example_gen/examples/" in out.stdout
    assert DATA in out.stdout
    assert "conveyor-test-secret" not in out.stdout


def test_second_run_is_fully_cached(s3_run):
    second = s3_run["conveyor"]("run", PIPELINE)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    states = node_states(second.stdout)
    executors = {k: s for k, s in states.items() if s != "resolved"}
    assert executors and set(executors.values()) == {"CACHED"}, second.stdout
