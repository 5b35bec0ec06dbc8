"""Different pipelines on one metadata store run in parallel (issue 6): two
`conveyor run` processes, each a different pipeline with its own root, write
to one fresh SQLite store at the same time; both complete, every execution
is recorded COMPLETE, each pipeline's contexts hold only its own executions,
and a second run of each comes wholly from the cache."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from tests.examples import REPO, example_dir, node_states

TAXI_CSV = os.path.join(example_dir("taxi"), "data", "data.csv")

# The first node of each pipeline waits until the other pipeline's has
# started too, so the two runs write to the store at the same time.
COMMON = textwrap.dedent('''
    import json, os, time
    from conveyor import Pipeline
    from conveyor.artifacts import Examples, Model
    from conveyor.components import component, InputArtifact, OutputArtifact, Parameter

    HERE = os.path.dirname(os.path.abspath(__file__))
    MEET = os.path.join(os.path.dirname(HERE), "meet")

    @component
    def rendezvous(rows: OutputArtifact[Examples], n: Parameter[int] = 50) -> None:
        open(os.path.join(MEET, os.path.basename(HERE)), "w").write("")
        deadline = time.monotonic() + 240
        while len(os.listdir(MEET)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other pipeline never started")
            time.sleep(0.05)
        open(os.path.join(rows.uri, "rows.txt"), "w").write("r\\n" * n)
''')

ALPHA = COMMON + textwrap.dedent('''
    @component
    def count(rows: InputArtifact[Examples], model: OutputArtifact[Model], k: Parameter[int] = 0) -> str:
        n = len(open(os.path.join(rows.uri, "rows.txt")).readlines())
        open(os.path.join(model.uri, "count.txt"), "w").write(str(n + k))
        return f"counted {n}"

    r = rendezvous()
    counts = [count(rows=r.outputs["rows"], k=i).with_id(f"count_{i}") for i in range(6)]
    pipeline = Pipeline("alpha", os.path.join(HERE, "root"), [r, *counts])
''')

BETA = COMMON + textwrap.dedent('''
    from conveyor.components import CsvExampleGen

    @component
    def total(examples: InputArtifact[Examples], model: OutputArtifact[Model]) -> str:
        n = sum(json.loads(examples.get("row_counts")).values())
        open(os.path.join(model.uri, "total.txt"), "w").write(str(n))
        return f"{n} rows"

    r = rendezvous(n=7)
    gen = CsvExampleGen(input_base=os.path.join(HERE, "data"))
    pipeline = Pipeline("beta", os.path.join(HERE, "root"), [r, gen, total(examples=gen.outputs["examples"])])
''')

NODES = {
    "alpha": {"rendezvous", *(f"count_{i}" for i in range(6))},
    "beta": {"rendezvous", "csv_example_gen", "total"},
}


def _start(tmp_path, name: str, metadata: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "run", str(tmp_path / name / "pipeline.py"), "--metadata", metadata],
        cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _run_both(tmp_path, metadata: str) -> dict[str, dict[str, str]]:
    """Both pipelines at once; each one's node states."""
    procs = {name: _start(tmp_path, name, metadata) for name in NODES}
    states = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out}"
        assert "database is locked" not in out, out
        states[name] = node_states(out)
    return states


def _executions_by_pipeline(md: Metadata) -> dict[str, set[int]]:
    return {
        name: {e.id for e in md.store.get_executions_by_context(md.find_context("pipeline", name).id)}
        for name in NODES
    }


OPEN_STORE = textwrap.dedent('''
    import sys
    from conveyor.metadata.store import Metadata

    print("opening", flush=True)
    md = Metadata(sys.argv[1])
    ctx = md.context("pipeline", "late")
    md.finish_execution(md.start_execution("late_type", [ctx], {}, {}), [ctx], {})
    print("opened", flush=True)
''')


def test_a_new_store_opens_after_another_process_held_its_write_lock(tmp_path):
    """While one run creates a new store's tables (it holds the write lock),
    another run connecting to it is aborted by MLMD ("Concurrent writes
    aborted after max number of retries", in about 3 s); Metadata connects
    again until the store is free."""
    path = tmp_path / "metadata.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock a run creating the tables holds
    child = subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout.readline() == "opening\n"
        time.sleep(6)  # longer than MLMD's own retries of the connection
        assert child.poll() is None, child.stdout.read()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.endswith("opened\n"), out
    [e] = Metadata(str(path)).store.get_executions()
    assert pb.Execution.State.Name(e.last_known_state) == "COMPLETE"


def test_two_different_pipelines_share_one_store_at_the_same_time(tmp_path):
    (tmp_path / "meet").mkdir()
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "pipeline.py").write_text(ALPHA)
    (tmp_path / "beta" / "data").mkdir(parents=True)
    (tmp_path / "beta" / "pipeline.py").write_text(BETA)
    with open(TAXI_CSV) as f:
        (tmp_path / "beta" / "data" / "data.csv").write_text("".join(f.readlines()[:2001]))
    metadata = str(tmp_path / "shared" / "metadata.sqlite")  # does not exist yet: both create it

    first = _run_both(tmp_path, metadata)
    assert first == {name: dict.fromkeys(nodes, "COMPLETE") for name, nodes in NODES.items()}
    assert sorted(os.listdir(tmp_path / "meet")) == ["alpha", "beta"]

    md = Metadata(metadata)
    executions = md.store.get_executions()
    assert len(executions) == sum(len(nodes) for nodes in NODES.values())
    assert {pb.Execution.State.Name(e.last_known_state) for e in executions} == {"COMPLETE"}
    by_pipeline = _executions_by_pipeline(md)
    assert not by_pipeline["alpha"] & by_pipeline["beta"]
    assert by_pipeline["alpha"] | by_pipeline["beta"] == {e.id for e in executions}
    for name, nodes in NODES.items():
        # Each node context holds that node's one execution, from this pipeline.
        for node in nodes:
            [e] = md.store.get_executions_by_context(md.find_context("node", f"{name}.{node}").id)
            assert e.id in by_pipeline[name]
            assert e.custom_properties[mdstore.COMPONENT_ID].string_value == node
        # Every run context of this pipeline holds only its executions.
        runs = [c for c in md.store.get_contexts_by_type("pipeline_run")
                if c.properties["pipeline_name"].string_value == name]
        assert len(runs) == 1
        assert {e.id for e in md.store.get_executions_by_context(runs[0].id)} == by_pipeline[name]
        # Outputs landed under this pipeline's own root.
        for e in md.store.get_executions_by_context(md.find_context("pipeline", name).id):
            for a in md.io_of(e.id).get("rows", []) + md.io_of(e.id).get("examples", []):
                assert a.uri.startswith(str(tmp_path / name / "root")), a.uri
    [total] = md.store.get_executions_by_context(md.find_context("node", "beta.total").id)
    [model] = md.io_of(total.id)["model"]
    assert open(os.path.join(model.uri, "total.txt")).read() == "2000"

    second = _run_both(tmp_path, metadata)
    assert second == {name: dict.fromkeys(nodes, "CACHED") for name, nodes in NODES.items()}
    md = Metadata(metadata)
    states = [pb.Execution.State.Name(e.last_known_state) for e in md.store.get_executions()]
    assert sorted(set(states)) == ["CACHED", "COMPLETE"]
    assert states.count("CACHED") == states.count("COMPLETE") == sum(len(nodes) for nodes in NODES.values())
    after = _executions_by_pipeline(md)
    assert not after["alpha"] & after["beta"]
    assert len(after["alpha"]) == 2 * len(NODES["alpha"]) and len(after["beta"]) == 2 * len(NODES["beta"])


def test_one_run_id_cannot_be_two_pipelines_runs(tmp_path):
    import pytest

    from conveyor import LocalRunner, Pipeline
    from conveyor.errors import PipelineDefinitionError
    from tests.lightweight import make_rows

    store = str(tmp_path / "metadata.sqlite")
    first = Pipeline("first", str(tmp_path / "a"), [make_rows()], metadata=store)
    second = Pipeline("second", str(tmp_path / "b"), [make_rows()], metadata=store)
    LocalRunner(launcher="thread").run(first, run_id="nightly")
    with pytest.raises(PipelineDefinitionError, match="run id 'nightly' is already a run of pipeline 'first'"):
        LocalRunner(launcher="thread").run(second, run_id="nightly")
    # The same pipeline may use it again (a re-run under its own id).
    assert LocalRunner(launcher="thread").run(first, run_id="nightly").nodes["make_rows"].state == "CACHED"
