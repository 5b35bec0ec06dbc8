"""The taxi pipeline recording into real MySQL (MariaDB) and PostgreSQL
servers through MLMD's own connection configs, as a user runs it:
`conveyor run --metadata mysql://conveyor@127.0.0.1:PORT/mlmd` with the
password in the environment; its lineage queried back from the database;
the password nowhere in MLMD or the output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import Pipeline, PipelineDefinitionError
from conveyor.metadata.store import Metadata
from tests.databases import PASSWORD, MariaDB, Postgres
from tests.examples import REPO, example_dir

PIPELINE = os.path.join(example_dir("taxi"), "pipeline.py")


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def database(request):
    server = Postgres() if request.param == "postgresql" else MariaDB()
    with server:
        yield server


def _conveyor(env, *args):
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def test_taxi_pipeline_records_into_the_database_and_its_lineage_reads_back(database, tmp_path, monkeypatch):
    env = {**os.environ, "CONVEYOR_METADATA_PASSWORD": PASSWORD, "CONVEYOR_TAXI_ROOT": str(tmp_path / "root"),
           "CONVEYOR_TAXI_TRAIN_STEPS": "100", "CONVEYOR_TAXI_EVAL_STEPS": "20"}
    first = _conveyor(env, "run", PIPELINE, "--metadata", database.uri)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"metadata {database.uri}" in first.stdout
    assert not (tmp_path / "root" / "metadata.sqlite").exists()  # nothing went to SQLite

    lineage = _conveyor(env, "lineage", PIPELINE, "--metadata", database.uri)
    assert lineage.returncode == 0, lineage.stderr
    assert lineage.stdout.startswith("PushedModel #")
    assert "csv_example_gen" in lineage.stdout and os.path.join(example_dir("taxi"), "data") in lineage.stdout
    runs = _conveyor(env, "runs", PIPELINE, "--metadata", database.uri)
    assert runs.returncode == 0 and "pusher" in runs.stdout, runs.stderr

    second = _conveyor(env, "run", PIPELINE, "--metadata", database.uri)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 cached" in second.stdout

    monkeypatch.setenv("CONVEYOR_METADATA_PASSWORD", PASSWORD)
    md = Metadata(database.uri)
    executions = md.store.get_executions()
    assert {e.last_known_state for e in executions} <= {pb.Execution.COMPLETE, pb.Execution.CACHED}
    assert len(executions) == 20  # 10 nodes, twice
    recorded = [str(v) for e in executions for v in e.custom_properties.values()]
    recorded += [str(v) for a in md.store.get_artifacts() for v in a.custom_properties.values()]
    for text in (*recorded, first.stdout, first.stderr, lineage.stdout, runs.stdout):
        assert PASSWORD not in text


def test_a_wrong_password_is_a_clear_error(database, tmp_path):
    env = {**os.environ, "CONVEYOR_METADATA_PASSWORD": "wrong", "CONVEYOR_TAXI_ROOT": str(tmp_path / "root")}
    out = _conveyor(env, "runs", PIPELINE, "--metadata", database.uri)
    assert out.returncode != 0
    assert "wrong" not in out.stdout + out.stderr


def test_a_password_in_the_uri_is_refused(tmp_path):
    with pytest.raises(PipelineDefinitionError, match="CONVEYOR_METADATA_PASSWORD"):
        Pipeline("p", str(tmp_path), [], metadata="postgresql://conveyor:hunter2@127.0.0.1:5432/mlmd")
    with pytest.raises(PipelineDefinitionError, match="must name a user, a host and a database"):
        Pipeline("p", str(tmp_path), [], metadata="mysql://127.0.0.1/")


def test_strings_with_backslashes_round_trip(database, monkeypatch):
    from conveyor.artifacts import Schema

    monkeypatch.setenv("CONVEYOR_METADATA_PASSWORD", PASSWORD)
    md = Metadata(database.uri)
    ctx = md.context("pipeline", "backslashes")
    value = 'C:\\data\\new "quoted" \\n'
    execution_id = md.start_execution("t.Backslash", [ctx], {}, {"path": value, "nested": {"k": value}})
    md.finish_execution(execution_id, [ctx], {"out": [Schema("/x", custom_properties={"note": value})]})
    props = md.properties_of(md.execution(execution_id))
    assert props["path"] == value
    [out] = md.io_of(execution_id)["out"]
    assert out.custom_properties["note"] == value
