"""The `conveyor` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.examples import REPO, example_dir

SCHEMA = os.path.join(REPO, "tests", "testdata", "taxi", "schema_gen", "schema", "schema.pbtxt")


def conveyor(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_compile_prints_the_taxi_pipeline_ir():
    out = conveyor("compile", os.path.join(example_dir("taxi"), "pipeline.py"))
    assert out.returncode == 0, out.stderr
    ir = json.loads(out.stdout)
    ids = [n["id"] for n in ir["nodes"]]
    assert ids[0] == "csv_example_gen" and ids[-1] == "pusher"
    assert {"statistics_gen", "schema_gen", "example_validator", "transform", "trainer", "evaluator"} <= set(ids)
    trainer = next(n for n in ir["nodes"] if n["id"] == "trainer")
    assert trainer["inputs"]["examples"] == {
        "type": "Examples", "producer": "transform", "output_key": "transformed_examples"
    }


def test_schema_show_and_diff(tmp_path):
    out = conveyor("schema", "show", SCHEMA)
    assert out.returncode == 0, out.stderr
    assert "fare" in out.stdout and "payment_type" in out.stdout
    same = conveyor("schema", "diff", SCHEMA, SCHEMA)
    assert same.returncode == 0, same.stdout + same.stderr
    changed = tmp_path / "schema.pbtxt"
    text = open(SCHEMA).read().replace('name: "fare"', 'name: "fare_amount"')
    changed.write_text(text)
    diff = conveyor("schema", "diff", SCHEMA, str(changed))
    assert diff.returncode == 1
    assert "fare_amount" in diff.stdout and "fare" in diff.stdout


PIPELINE = textwrap.dedent(
    """
    import os
    from conveyor import Pipeline
    from conveyor.artifacts import Examples, Model
    from conveyor.components import component, InputArtifact, OutputArtifact, Parameter

    @component
    def make(rows: OutputArtifact[Examples], n: Parameter[int] = 2) -> None:
        open(os.path.join(rows.uri, "rows.txt"), "w").write("r\\n" * n)

    @component
    def fit(rows: InputArtifact[Examples], model: OutputArtifact[Model]) -> str:
        return "fitted"

    m = make()
    pipeline = Pipeline("cli", os.path.join(os.path.dirname(__file__), "root"), [m, fit(rows=m.outputs["rows"])])
    """
)


def test_run_caches_and_lineage(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    first = conveyor("run", str(path), "--runner=DirectRunner")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "make" in first.stdout and "COMPLETE" in first.stdout and "fitted" in first.stdout
    second = conveyor("run", str(path))
    assert second.stdout.count("CACHED") == 2
    forced = conveyor("run", str(path), "--no-cache")
    assert "CACHED" not in forced.stdout and forced.stdout.count("COMPLETE") == 2
    lineage = conveyor("lineage", str(path), "--artifact", "2")
    assert lineage.returncode == 0, lineage.stderr
    assert "Model #2" in lineage.stdout and "<- fit" in lineage.stdout and "Examples #1" in lineage.stdout


def test_definition_errors_are_reported_not_traced(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE.replace("make()", "make(nn=3)"))
    out = conveyor("run", str(path))
    assert out.returncode == 2
    assert "error:" in out.stderr and "Did you mean 'n'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_runs_lists_states_reasons_and_errors(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    assert conveyor("run", str(path)).returncode == 0
    path.write_text(PIPELINE.replace("make()", "make(n=5)").replace('return "fitted"', 'raise ValueError("no rows")'))
    failed = conveyor("run", str(path))
    assert failed.returncode == 1 and "no rows" in failed.stderr
    out = conveyor("runs", str(path))
    assert out.returncode == 0, out.stderr
    newest, oldest = out.stdout.split("run ")[1:3]
    # The function components live in the pipeline file, so its code changed too.
    assert "make" in newest and "parameter 'n' changed (2 -> 5)" in newest
    assert "code file pipeline.py changed" in newest
    assert "fit" in newest and "FAILED" in newest and "no rows" in newest
    assert [line.split()[1] for line in oldest.splitlines()[1:] if line.strip()] == ["COMPLETE", "COMPLETE"]


def test_query_commands_take_the_pipeline_file(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    assert conveyor("run", str(path)).returncode == 0
    path.write_text(PIPELINE.replace("make()", "make(n=5)"))
    assert conveyor("run", str(path)).returncode == 0
    why = conveyor("why", str(path), "latest", "make")
    assert why.returncode == 0, why.stderr
    assert "parameter 'n' changed (2 -> 5)" in why.stdout
    diff = conveyor("diff", str(path), "previous", "latest", "--json")
    assert diff.returncode == 0, diff.stderr
    nodes = {n["node"]: n for n in json.loads(diff.stdout)["nodes"]}
    assert nodes["make"]["parameters"] == {"n": [2, 5]}
    assert nodes["fit"]["reran"] and "input 'rows' changed (artifacts 1 -> 3)" in nodes["fit"]["changes"]
    show = conveyor("show", str(path), "1")
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("Examples #1  ") and "make (make), execution #1" in show.stdout
    assert conveyor("why", str(path), "latest", "nope").returncode == 1
    assert conveyor("why", str(tmp_path / "missing.py"), "latest", "make").returncode == 2
