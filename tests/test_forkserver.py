"""The default launcher: each node in a process forked from a server that
imported the ML stack once (conveyor.forkserver)."""

from __future__ import annotations

import gc
import json
import os
import signal
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


@component
def report_beam_io(model: OutputArtifact[Model]) -> None:
    import sys

    with open(os.path.join(model.uri, "seen.json"), "w") as f:
        json.dump({"pid": os.getpid(), "tfma": "tensorflow_model_analysis" in sys.modules,
                   "beam": "apache_beam" in sys.modules,
                   "bigquery": "apache_beam.io.gcp.bigquery" in sys.modules}, f)


# A first node that needs TFMA (as an Evaluator whose upstream is cached
# does) brings Beam in before the server's list reaches it.
report_beam_io.EXECUTOR_IMPORTS = ("tensorflow_model_analysis",)


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


# A server with two modules to import, the second of which blocks until the
# test releases it, and a node that says which modules it found imported,
# then forks a process of its own, which notes its open files.
BLOCKING_SERVER = textwrap.dedent(
    """
    import json, os, select, sys
    from conveyor import forkserver

    def run(invocation, result):
        with open(invocation + ".modules.json", "w") as f:
            json.dump({name: getattr(sys.modules.get(name), "PID", None) for name in ("needed", "stranger", "blocker")}
                      | {"server": os.getppid()}, f)
        pid = os.fork()
        if pid == 0:
            fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in map(int, os.listdir("/proc/self/fd"))
                   if os.path.exists(f"/proc/self/fd/{fd}")}
            with open(invocation + ".forked.json", "w") as f:
                json.dump(fds, f)
            os._exit(0)
        os.waitpid(pid, 0)
        with open(result, "w") as f:
            f.write("ok")
        return 3

    select.select([0], [], [])  # the request is there before the import starts
    sys.exit(forkserver.serve(int(sys.argv[1]), ["needed", "blocker"], run, lambda: print("finished", flush=True)))
    """
)


def _reply(stream, timeout: float = 60.0) -> dict:
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer from the fork server"
    line = stream.readline()
    assert line, "the fork server closed its pipe"
    return json.loads(line)


def test_a_node_says_it_is_done_itself_while_the_server_is_busy_importing(tmp_path):
    release = tmp_path / "release"
    (tmp_path / "blocker.py").write_text(
        f"import os, time\nPID = os.getpid()\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\n")
    for name in ("needed", "stranger"):
        (tmp_path / f"{name}.py").write_text("import os\nPID = os.getpid()\n")
    (tmp_path / "server.py").write_text(BLOCKING_SERVER)
    read_end, write_end = os.pipe()
    pipe = os.readlink(f"/proc/self/fd/{write_end}")
    server = subprocess.Popen(
        [sys.executable, str(tmp_path / "server.py"), str(write_end)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, pass_fds=(write_end,), text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])})
    os.close(write_end)
    replies = os.fdopen(read_end, "r")
    try:
        invocation, result = tmp_path / "invocation.json", tmp_path / "result.json"
        invocation.write_text("{}")
        assert server.stdin is not None
        server.stdin.write(json.dumps({"id": 7, "invocation": str(invocation), "result": str(result),
                                       "needs": ["needed", "stranger"]}) + "\n")
        server.stdin.flush()
        forked = _reply(replies)
        assert forked["id"] == 7
        # The server is stuck in its import, so it cannot have reaped the
        # child: this answer is the child's own, after its result and finish().
        assert _reply(replies) == {"done": 7, "code": 3}
        assert result.read_text() == "ok"
        assert not release.exists()
        # What the node needs of the server's list was imported by the server
        # before the fork; a need not on its list is left to the node.
        seen = json.loads((tmp_path / "invocation.json.modules.json").read_text())
        assert seen == {"needed": seen["server"], "stranger": None, "blocker": None, "server": seen["server"]}, seen
        # The process the node forked had no copy of the run's pipe.
        opened = json.loads((tmp_path / "invocation.json.forked.json").read_text())
        assert pipe not in opened.values(), opened
        release.write_text("")
        server.stdin.close()
        assert _reply(replies) == {"pid": forked["pid"], "code": 3}  # the server's word, once it could reap
        assert server.wait(timeout=60) == 0
        assert server.stdout is not None and server.stdout.read() == "finished\n"
    finally:
        release.write_text("")
        server.kill()
        server.wait()
        replies.close()


def test_a_run_starts_its_fork_server_before_opening_the_store_and_stops_it_if_nothing_runs(tmp_path, monkeypatch):
    from conveyor import forkserver
    from conveyor.pipeline import runner as runner_module

    events, servers = [], []
    start, metadata = forkserver.ForkServer.start, runner_module.Metadata

    def record_start(self):
        if not servers or servers[-1] is not self:
            events.append("server started")
            servers.append(self)
        return start(self)

    def record_metadata(*args, **kwargs):
        events.append("store opened")
        return metadata(*args, **kwargs)

    monkeypatch.setattr(forkserver.ForkServer, "start", record_start)
    monkeypatch.setattr(runner_module, "Metadata", record_metadata)
    first = change_tf_state()
    pipeline = Pipeline("early", str(tmp_path / "root"), [first, read_tf_state(rows=first.outputs["rows"])])
    LocalRunner(echo=lambda line: None).run(pipeline)
    assert events == ["server started", "store opened"]
    assert servers[0].returncode == 0  # asked to run nodes: it ended at the end of its input
    events.clear()
    cached = LocalRunner(echo=lambda line: None).run(pipeline)
    assert {r.state for r in cached.nodes.values()} == {"CACHED"}
    assert events == ["server started", "store opened"]
    # Asked nothing: killed at the end of the run, not awaited while it imports TensorFlow.
    assert servers[1].returncode == -signal.SIGKILL


def test_a_first_node_whose_needs_bring_beam_in_finds_it_imported_without_bigquery(tmp_path):
    result = LocalRunner(echo=lambda line: None).run(Pipeline("beamio", str(tmp_path / "root"), [report_beam_io()]))
    seen = _seen(result.outputs("report_beam_io", "model")[0])
    assert seen["pid"] != os.getpid()
    assert seen["tfma"] and seen["beam"]  # imported by the server, for the node
    assert not seen["bigquery"]  # deferred to its first use, as beam_tuning.import_beam does
