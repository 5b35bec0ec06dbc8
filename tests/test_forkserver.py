"""The default launcher: each node in a process forked from a server that
imported the ML stack once (conveyor.forkserver)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conveyor import LocalRunner, Pipeline, PipelineDefinitionError, launch
from conveyor.artifacts import Examples, Model
from conveyor.components.function import InputArtifact, OutputArtifact, component

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@component
def change_tf_state(rows: OutputArtifact[Examples]) -> None:
    # Process-wide TensorFlow and Keras state, as a careless module file might leave it.
    import tensorflow as tf

    tf.keras.backend.set_floatx("float64")
    with open(os.path.join(rows.uri, "seen.json"), "w") as f:
        json.dump({"pid": os.getpid()}, f)


@component
def read_tf_state(rows: InputArtifact[Examples], model: OutputArtifact[Model]) -> None:
    import tensorflow as tf

    with open(os.path.join(model.uri, "seen.json"), "w") as f:
        json.dump({"pid": os.getpid(), "floatx": tf.keras.backend.floatx(), "gc": gc.get_threshold(),
                   "collects": gc.isenabled()}, f)


def _seen(artifact) -> dict:
    with open(os.path.join(artifact.uri, "seen.json")) as f:
        return json.load(f)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_nodes_do_not_see_each_others_tensorflow_state_and_leave_no_process(tmp_path):
    ours = gc.get_threshold()
    first = change_tf_state()
    second = read_tf_state(rows=first.outputs["rows"])
    result = LocalRunner(echo=lambda line: None).run(Pipeline("tfstate", str(tmp_path / "root"), [first, second]))
    [rows], [model] = result.outputs("change_tf_state", "rows"), result.outputs("read_tf_state", "model")
    a, b = _seen(rows), _seen(model)
    assert len({a["pid"], b["pid"], os.getpid()}) == 3  # a process of its own for each node
    assert b["floatx"] == "float32", b  # Keras' default: nothing of the first node
    assert tuple(b["gc"]) == launch.NODE_GC_THRESHOLDS and gc.get_threshold() == ours  # the node's, not ours
    assert b["collects"]  # the server imports with the collector off; its children turn it on
    assert not _alive(a["pid"]) and not _alive(b["pid"])
    helpers = [p for p in os.listdir("/proc") if p.isdigit() and _is_fork_server_of(int(p), os.getpid())]
    assert helpers == []  # the fork server ended with the run


def _is_fork_server_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
    except OSError:
        return False
    return b"--fork-server" in cmdline and ppid == parent and _alive(pid)


def test_the_thread_launcher_shares_tensorflow_state(tmp_path):
    # What the test above rules out, seen with threads: it can fail.
    import tensorflow as tf

    first = change_tf_state()
    second = read_tf_state(rows=first.outputs["rows"])
    try:
        result = LocalRunner(echo=lambda line: None, launcher="thread").run(
            Pipeline("tfstate", str(tmp_path / "root"), [first, second]))
        [model] = result.outputs("read_tf_state", "model")
        assert _seen(model)["floatx"] == "float64"
    finally:
        tf.keras.backend.set_floatx("float32")  # this process is the other tests' too


def test_a_component_defined_inside_a_function_is_refused_before_anything_runs(tmp_path):
    @component
    def local(rows: OutputArtifact[Examples]) -> None:
        open(os.path.join(rows.uri, "rows.txt"), "w").write("x")

    pipeline = Pipeline("local", str(tmp_path / "root"), [local()])
    with pytest.raises(PipelineDefinitionError, match="defined inside a function.*launcher=\"thread\""):
        LocalRunner(echo=lambda line: None).run(pipeline)
    assert not (tmp_path / "root").exists()
    result = LocalRunner(echo=lambda line: None, launcher="thread").run(pipeline)
    assert result.nodes["local"].state == "COMPLETE"


UNGUARDED = textwrap.dedent(
    """
    import os
    from conveyor import LocalRunner, Pipeline
    from conveyor.artifacts import Examples
    from conveyor.components import component, OutputArtifact

    @component
    def make(rows: OutputArtifact[Examples]) -> None:
        open(os.path.join(rows.uri, "rows.txt"), "w").write("x")

    pipeline = Pipeline("unguarded", os.path.join(os.path.dirname(os.path.abspath(__file__)), "root"), [make()])
    LocalRunner().run(pipeline)
    """
)


def test_a_script_that_runs_its_pipeline_when_imported_is_told_to_guard_it(tmp_path):
    (tmp_path / "pipeline.py").write_text(UNGUARDED)
    script = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert script.returncode != 0
    out = script.stdout + script.stderr
    assert "make" in out and 'if __name__ == "__main__":' in out, out
    guarded = UNGUARDED.replace("LocalRunner().run(pipeline)",
                                'if __name__ == "__main__":\n    LocalRunner().run(pipeline)')
    (tmp_path / "pipeline.py").write_text(guarded)
    script = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert script.returncode == 0, script.stdout + script.stderr
    assert (tmp_path / "root" / "make" / "rows").exists()
