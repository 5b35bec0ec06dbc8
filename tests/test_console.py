"""A run's console and logs: our own lines on the console, what TensorFlow,
absl, Beam and Keras print in per-execution logs under
<root>/_logs/<run id>/, recorded in MLMD (conveyor.pipeline.console)."""

from __future__ import annotations

import glob
import logging
import os
import pty
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from conveyor import LocalRunner, Pipeline, fs
from conveyor.artifacts import Examples, Model
from conveyor.components import InputArtifact, OutputArtifact, Parameter, component
from conveyor.metadata.store import COMPONENT_ID, LOG_PATH, Metadata
from tests.examples import REPO, example_dir, node_states

# What a taxi run's console held before: TensorFlow's C++ start-up, its
# deprecation warnings, Keras' progress, escape codes.
NOISE = ("cuFFT", "cuDNN", "oneDNN", "WARNING:tensorflow", "DeprecationWarning", "Epoch", " - loss: ", "\x1b[")


def conveyor(*args: str, env: dict[str, str] | None = None, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def _ours(output: str) -> list[str]:
    """The lines of a run's output that are not Conveyor's own."""
    return [line for line in output.splitlines()
            if line.strip() and not line.startswith(("pipeline ", "  ", "FAILED ", "run stopped"))]


def _logs(root: str) -> dict[str, str]:
    """{file name: content} of every log under the root."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, "_logs")):
        for name in files:
            found[name] = _read(os.path.join(folder, name))
    return found


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _recorded_logs(root: str) -> dict[str, str | None]:
    """{component id: the log path recorded on its execution} of the last run."""
    md = Metadata(os.path.join(root, "metadata.sqlite"))
    found = {}
    for e in md.store.get_executions():
        node = e.custom_properties[COMPONENT_ID].string_value
        found[node] = e.custom_properties[LOG_PATH].string_value if LOG_PATH in e.custom_properties else None
    return found


# -- the taxi example through `conveyor run` ----------------------------------------------------------


@pytest.fixture(scope="module")
def taxi_cli(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("console_taxi") / "root")
    out = conveyor("run", os.path.join(example_dir("taxi"), "pipeline.py"), env={
        "CONVEYOR_TAXI_ROOT": root, "CONVEYOR_TAXI_TRAIN_STEPS": "10", "CONVEYOR_TAXI_EVAL_STEPS": "5"})
    return {"root": root, "out": out}


def test_a_taxi_run_prints_only_our_lines(taxi_cli):
    out = taxi_cli["out"]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert [n for n in NOISE if n in console] == [], console
    assert _ours(console) == [], console
    states = node_states(out.stdout)
    assert len(states) == 10 and set(states.values()) == {"COMPLETE", "resolved"}, out.stdout


def test_a_taxi_run_logs_each_execution_under_the_root(taxi_cli):
    root = taxi_cli["root"]
    [run_id] = os.listdir(os.path.join(root, "_logs"))
    recorded = _recorded_logs(root)
    ran = {node for node in recorded if "resolver" not in node and node != "analyzer_cache"}
    assert len(ran) == 8
    md = Metadata(os.path.join(root, "metadata.sqlite"))
    for e in md.store.get_executions():
        node = e.custom_properties[COMPONENT_ID].string_value
        if node in ran:
            assert recorded[node] == os.path.join(root, "_logs", run_id, f"{node}-{e.id}.log")
            assert os.path.isfile(recorded[node]), node
        else:
            assert recorded[node] is None, node  # a resolver runs nothing to log
    logs = _logs(root)
    # Keras' training output in the Trainer's log; TensorFlow's Python
    # warnings (TFMA's writer calls a deprecated TF function) in the Evaluator's.
    trainer = logs[os.path.basename(recorded["trainer"])]
    assert " - loss: " in trainer, trainer
    evaluator = logs[os.path.basename(recorded["evaluator"])]
    assert "WARNING:tensorflow" in evaluator, evaluator
    assert "apache_beam" in logs[os.path.basename(recorded["transform"])]
    # The run's own log has our lines, and what went straight to fd 2 (TF's C++ logs), if anything.
    assert "  trainer                      COMPLETE in" in logs["run.log"]

    shown = conveyor("logs", "--store", root, "latest", "trainer")
    assert shown.returncode == 0, shown.stderr
    assert recorded["trainer"] in shown.stdout.splitlines()[0]
    assert " - loss: " in shown.stdout


# -- light pipelines -------------------------------------------------------------------------------

LIGHT = textwrap.dedent(
    """
    import logging, os, warnings
    from conveyor import Pipeline
    from conveyor.artifacts import Examples, Model
    from conveyor.components import component, InputArtifact, OutputArtifact, Parameter

    @component
    def make(rows: OutputArtifact[Examples]) -> None:
        print("PRINTED-BY-MAKE")
        logging.getLogger("somelib").warning("LOGGED-BY-MAKE")
        warnings.warn("WARNED-BY-MAKE")
        os.write(2, b"FD2-BY-MAKE\\n")
        open(os.path.join(rows.uri, "rows.txt"), "w").write("r\\n")

    @component
    def fit(rows: InputArtifact[Examples], model: OutputArtifact[Model], fail: Parameter[int] = 0) -> str:
        print("PRINTED-BY-FIT")
        if fail:
            raise ValueError("no rows")
        return "fitted"

    m = make()
    pipeline = Pipeline("light", os.path.join(os.path.dirname(__file__), "root"),
                        [m, fit(rows=m.outputs["rows"], fail=int(os.environ.get("FAIL", "0")))])
    """
)
LIBRARY = ("PRINTED-BY", "LOGGED-BY", "WARNED-BY", "FD2-BY")


def test_the_process_launcher_logs_all_a_node_writes_and_a_failure_names_its_log(tmp_path):
    (tmp_path / "pipeline.py").write_text(LIGHT)
    out = conveyor("run", "pipeline.py", "--launcher", "process", env={"FAIL": "1"}, cwd=str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    console = out.stdout + out.stderr
    assert [x for x in LIBRARY if x in console] == [], console
    root = str(tmp_path / "root")
    recorded = _recorded_logs(root)
    # The failed node's line and the closing message name its log.
    assert f"log: {recorded['fit']}" in out.stdout
    assert f"FAILED fit (execution 2, log {recorded['fit']})" in out.stderr and "no rows" in out.stderr
    make = _read(recorded["make"])
    # Everything the child wrote: Python's prints, logging, warnings, and straight to fd 2.
    assert all(x + "-MAKE" in make for x in LIBRARY), make
    fit = _read(recorded["fit"])
    assert "PRINTED-BY-FIT" in fit and "ValueError: no rows" in fit and "FAILED after" in fit


def test_an_invocation_with_a_log_file_sends_the_launchers_output_there(tmp_path):
    from conveyor.launch import InvocationResult
    from tests.test_launch import _schema_gen_invocation

    invocation = _schema_gen_invocation(str(tmp_path / "out"))
    invocation.log_file = str(tmp_path / "node.log")
    (tmp_path / "invocation.json").write_text(invocation.to_json())
    proc = subprocess.run([sys.executable, "-m", "conveyor.launch", str(tmp_path / "invocation.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert InvocationResult.from_json(proc.stdout).succeeded  # the result still comes on stdout, alone
    # Importing TFDV and TensorFlow wrote to fd 2: into the log, not onto the launcher's stderr.
    assert "tensorflow" in _read(str(tmp_path / "node.log"))
    assert "tensorflow" not in proc.stderr and [n for n in NOISE if n in proc.stderr] == [], proc.stderr


def test_a_terminal_gets_a_live_display_and_our_lines(tmp_path):
    (tmp_path / "pipeline.py").write_text(LIGHT)
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run", "pipeline.py"], cwd=tmp_path,
                            stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        try:
            chunk = os.read(main, 65536) if ready else b""
        except OSError:  # the terminal closed: the run ended
            break
        seen += chunk
        if not ready and proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=30) == 0, seen
    text = seen.decode("utf-8", "replace")
    assert "pipeline light: 0 of 2 nodes done" in text  # the live display
    assert "  fit                          COMPLETE in" in text and "pipeline light: 2 complete" in text
    assert [x for x in LIBRARY if x in text] == [], text


# -- a run from Python, in this process ------------------------------------------------------------

MET = threading.Barrier(2, timeout=60)
CHATTER = logging.getLogger("conveyor-test-chatter")


@component
def chatter(rows: OutputArtifact[Examples], tag: Parameter[str] = "") -> None:
    MET.wait()  # both nodes write while the other runs
    for i in range(20):
        print(f"{tag}-print-{i}")
        CHATTER.warning(f"{tag}-logged-{i}")
    MET.wait()
    open(os.path.join(rows.uri, "rows.txt"), "w").write(tag)


@component
def alone(a: InputArtifact[Examples], b: InputArtifact[Examples], model: OutputArtifact[Model]) -> None:
    # A thread the node did not register (as Beam's workers), while no other node runs.
    helper = threading.Thread(target=lambda: print("FROM-A-HELPER-THREAD"))
    helper.start()
    helper.join()


def test_the_thread_launcher_sorts_python_output_by_node_and_restores_the_process(tmp_path):
    # A handler made before the run holds the stream it was given (as TensorFlow's does).
    handler = logging.StreamHandler(sys.stderr)
    CHATTER.addHandler(handler)
    CHATTER.propagate = False
    stdout, stderr = sys.stdout, sys.stderr
    fds = [os.fstat(n).st_ino for n in (1, 2)]
    lines: list[str] = []
    try:
        a, b = chatter(tag="AAA").with_id("a"), chatter(tag="BBB").with_id("b")
        last = alone(a=a.outputs["rows"], b=b.outputs["rows"])
        result = LocalRunner(echo=lines.append, launcher="thread").run(
            Pipeline("chat", str(tmp_path / "root"), [a, b, last]))
    finally:
        CHATTER.removeHandler(handler)
        CHATTER.propagate = True
    assert (sys.stdout, sys.stderr) == (stdout, stderr) and handler.stream is stderr
    assert [os.fstat(n).st_ino for n in (1, 2)] == fds
    logs = {node: _read(n.log_path) for node, n in result.nodes.items()}
    assert [line for line in lines if "FAILED" in line] == []
    for mine, other in (("AAA", "BBB"), ("BBB", "AAA")):
        log = logs["a" if mine == "AAA" else "b"]
        assert f"{mine}-print-19" in log and f"{mine}-logged-19" in log, log
        assert other not in log, log
    assert "FROM-A-HELPER-THREAD" in logs["alone"]
    assert all(result.nodes[n].log_path == _recorded_logs(str(tmp_path / "root"))[n] for n in logs)


@component
def to_the_store(rows: OutputArtifact[Examples]) -> None:
    print("PRINTED-ON-THE-WAY-TO-S3")
    fs.write_text(fs.join(rows.uri, "rows.txt"), "r\n")


def test_an_object_store_root_gets_its_logs_when_nodes_end(s3_env, tmp_path):
    root = f"{s3_env.bucket('conveyor-logs')}/root"
    pipeline = Pipeline("remote_logs", root, [to_the_store()], metadata=str(tmp_path / "metadata.sqlite"))
    result = LocalRunner(echo=lambda line: None).run(pipeline, run_id="r1")
    path = result.nodes["to_the_store"].log_path
    assert path == f"{root}/_logs/r1/to_the_store-1.log"
    assert "PRINTED-ON-THE-WAY-TO-S3" in fs.read_text(path)
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "conveyor-*-to_the_store-1.log"))  # copied, removed
    assert "to_the_store                 COMPLETE" in fs.read_text(f"{root}/_logs/r1/run.log")
    shown = conveyor("logs", "--store", str(tmp_path / "metadata.sqlite"), "r1", "to_the_store")
    assert shown.returncode == 0, shown.stderr
    assert path in shown.stdout.splitlines()[0] and "PRINTED-ON-THE-WAY-TO-S3" in shown.stdout


# -- a script calling LocalRunner().run(), and -v ---------------------------------------------------------

KERAS = textwrap.dedent(
    """
    import os, sys
    from conveyor import LocalRunner, Pipeline, fs
    from conveyor.artifacts import Model
    from conveyor.components import component, OutputArtifact

    @component
    def tiny_model(model: OutputArtifact[Model]) -> str:
        import numpy as np
        import tensorflow as tf

        keras = tf.keras
        m = keras.Sequential([keras.layers.Dense(4, activation="relu", input_shape=(3,)), keras.layers.Dense(1)])
        m.compile(optimizer="adam", loss="mse")
        x = np.random.rand(32, 3).astype("float32")
        m.fit(x, x.sum(axis=1, keepdims=True), epochs=2, steps_per_epoch=2, verbose=1)
        tf.saved_model.save(m, os.path.join(model.uri, "saved"))
        return "saved"

    pipeline = Pipeline("keras", os.path.join(os.path.dirname(os.path.abspath(__file__)), "root"), [tiny_model()])

    if __name__ == "__main__":
        LocalRunner().run(pipeline)
        print("SCRIPT DONE")
    """
)


def test_a_script_run_is_quiet_and_exits_without_tracebacks(tmp_path):
    (tmp_path / "pipeline.py").write_text(KERAS)
    script = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert script.returncode == 0, script.stdout + script.stderr
    assert "Exception ignored" not in script.stderr and "Traceback" not in script.stderr, script.stderr
    console = script.stdout + script.stderr
    assert [n for n in NOISE if n in console] == [], console
    assert _ours(console) == ["SCRIPT DONE"], console
    [log] = [text for name, text in _logs(str(tmp_path / "root")).items() if name.startswith("tiny_model-")]
    assert "Epoch 2/2" in log


def test_v_brings_the_library_output_back(tmp_path):
    (tmp_path / "pipeline.py").write_text(LIGHT)
    out = conveyor("run", "pipeline.py", "-v", cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    console = out.stdout + out.stderr
    assert all(x + "-MAKE" in console for x in LIBRARY), console
    assert not (tmp_path / "root" / "_logs").exists()
    assert set(_recorded_logs(str(tmp_path / "root")).values()) == {None}
