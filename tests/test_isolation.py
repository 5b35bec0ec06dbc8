"""Isolation between nodes: user modules load once, whole, without touching
sys.path, and with the code as it is now; what runs is the code the cache
key hashed; the process launcher's warm processes serve one node each and
leave nothing behind."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from conveyor import LocalRunner, Pipeline, fs
from conveyor.artifacts import Model
from conveyor.components.base import ExecutionContext, fingerprint_files, load_user_function
from conveyor.components.function import InputArtifact, OutputArtifact, component
from conveyor.errors import ExecutorError
from conveyor.launch import Invocation, component_class
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import driver
from conveyor.pipeline.dsl import Component, to_jsonable

# -- user modules in the orchestrator's process (the thread launcher) -------------------


def _write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def _unique(tmp_path) -> str:
    """A module name no other test uses (siblings are top-level modules)."""
    return f"iso_{os.path.basename(str(tmp_path)).replace('-', '_')}_{time.monotonic_ns()}"


def test_two_threads_loading_one_module_file_both_get_it_fully_executed(tmp_path):
    log = tmp_path / "executions.txt"
    module = _write(tmp_path / "slow_module.py", f"""
        import time
        open({str(log)!r}, "a").write("x")

        def value():
            return READY

        time.sleep(1.0)  # the second thread asks while this one executes
        READY = "ready"
    """)
    start = threading.Barrier(2)
    got: list = []

    def load() -> None:
        start.wait()
        fn = load_user_function("node", "value", module_file=module)
        got.append((fn, fn()))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [v for _, v in got] == ["ready", "ready"]
    assert got[0][0] is got[1][0]  # one module, executed once
    assert log.read_text() == "x"


def test_a_failed_load_leaves_nothing_half_loaded(tmp_path):
    name = _unique(tmp_path)
    module = _write(tmp_path / f"{name}.py", "def value():\n    return 1\n\nraise ValueError('broken at import')\n")
    with pytest.raises(ExecutorError, match="broken at import"):
        load_user_function("node", "value", module_file=module)
    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == module]
    _write(tmp_path / f"{name}.py", "def value():\n    return 2\n")
    assert load_user_function("node", "value", module_file=module)() == 2


def test_loading_leaves_sys_path_alone_and_a_lazy_sibling_import_works(tmp_path):
    sibling = _unique(tmp_path)
    _write(tmp_path / "code" / f"{sibling}.py", "VALUE = 'from the sibling'\n")
    module = _write(tmp_path / "code" / "user_module.py", f"""
        def value():
            import {sibling}  # imported when called, long after the module loaded
            return {sibling}.VALUE
    """)
    before = list(sys.path)
    fn = load_user_function("node", "value", module_file=module)
    assert sys.path == before
    assert fn() == "from the sibling"
    assert sys.path == before


def test_an_edited_sibling_is_imported_again(tmp_path):
    sibling = _unique(tmp_path)
    helpers = tmp_path / "code" / f"{sibling}.py"
    _write(helpers, "VALUE = 1\n")
    eager = _write(tmp_path / "code" / "eager.py", f"import {sibling}\n\ndef value():\n    return {sibling}.VALUE\n")
    lazy = _write(tmp_path / "code" / "lazy.py", f"def value():\n    import {sibling}\n    return {sibling}.VALUE\n")
    assert load_user_function("node", "value", module_file=eager)() == 1
    assert load_user_function("node", "value", module_file=lazy)() == 1
    _write(helpers, "VALUE = 2\n")
    assert load_user_function("node", "value", module_file=eager)() == 2
    assert load_user_function("node", "value", module_file=lazy)() == 2


def test_module_files_in_two_folders_each_get_their_own_sibling(tmp_path):
    sibling = _unique(tmp_path)
    loaded = []
    for n in (1, 2):
        _write(tmp_path / f"dir{n}" / f"{sibling}.py", f"VALUE = {n}\n")
        module = _write(tmp_path / f"dir{n}" / "module.py",
                        f"import {sibling}\n\ndef value():\n    return {sibling}.VALUE\n")
        loaded.append(load_user_function("node", "value", module_file=module))
    assert [fn() for fn in loaded] == [1, 2]


def test_a_component_class_from_its_file_loads_once_without_sys_path(tmp_path):
    sibling = _unique(tmp_path)
    _write(tmp_path / f"{sibling}.py", "GREETING = 'hello'\n")
    name = f"{sibling}_pipeline"
    code_file = _write(tmp_path / f"{name}.py", f"""
        import time
        import {sibling}
        time.sleep(0.5)

        class Thing:
            GREETING = {sibling}.GREETING
    """)
    invocation = Invocation(component_id="thing", component_class=f"{name}:Thing", executor="", parameters={},
                            inputs={}, outputs={}, code_file=code_file)
    before = list(sys.path)
    start = threading.Barrier(2)
    got: list = []

    def resolve() -> None:
        start.wait()
        got.append(component_class(invocation))

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 2 and got[0] is got[1] and got[0].GREETING == "hello"
    assert sys.path == before


# -- what runs is what was hashed ---------------------------------------------------------

# The executor below waits here after the run took the cache key and staged
# the code, while the test edits the module file.
STAGED = threading.Event()
RESUME = threading.Event()


def _run_user_value(inputs: dict, outputs: dict, params: _CodeParams, ctx: ExecutionContext) -> str:
    STAGED.set()
    RESUME.wait(timeout=30)
    value = load_user_function(ctx.component_id, "value", module_file=params.module_file)()
    fs.write_text(fs.join(outputs["model"][0].uri, "value.txt"), value)
    return value


@dataclasses.dataclass(frozen=True)
class _CodeParams:
    module_file: str = ""


class RunsUserCode(Component):
    """A component that loads `value()` from its module file when it runs."""

    OUTPUTS = {"model": Model}
    Params = _CodeParams
    EXECUTOR = staticmethod(_run_user_value)
    CODE_PARAMS = ("module_file",)


def test_a_module_file_edited_during_the_run_does_not_change_what_runs(tmp_path):
    module = _write(tmp_path / "code" / "user_code.py", "def value():\n    return 'hashed'\n")
    pipeline = Pipeline("snapshot", str(tmp_path / "root"), [RunsUserCode(module_file=module)])
    STAGED.clear()
    RESUME.clear()
    results: list = []
    runner = threading.Thread(target=lambda: results.append(
        LocalRunner(launcher="thread", echo=lambda line: None).run(pipeline)))
    runner.start()
    try:
        assert STAGED.wait(timeout=60)
        # The key is taken and the node started: this edit belongs to the next run.
        _write(tmp_path / "code" / "user_code.py", "def value():\n    return 'edited'\n")
    finally:
        RESUME.set()
        runner.join(timeout=60)
    [result] = results
    [model] = result.outputs("runs_user_code", "model")
    assert fs.read_text(fs.join(model.uri, "value.txt")) == "hashed"
    # The key recorded is the hashed content's, and the code ran from the snapshot.
    md = Metadata(result.metadata_path)
    [execution] = md.store.get_executions_by_id([result.nodes["runs_user_code"].execution_id])
    parts = json.loads(execution.custom_properties[mdstore.CACHE_KEY_PARTS].string_value)
    original = _write(tmp_path / "original" / "user_code.py", "def value():\n    return 'hashed'\n")
    assert parts["code:user_code.py"] == fingerprint_files([original])
    [snapshot] = fs.glob(fs.join(str(tmp_path / "root"), driver.CODE_DIR, "*", "user_code.py"))
    assert "'hashed'" in fs.read_text(snapshot)
    # The next run sees the edit.
    again = LocalRunner(launcher="thread", echo=lambda line: None).run(pipeline)
    assert again.nodes["runs_user_code"].rerun_reason == ["code file user_code.py changed"]
    [model] = again.outputs("runs_user_code", "model")
    assert fs.read_text(fs.join(model.uri, "value.txt")) == "edited"


def test_code_is_staged_once_per_content_and_refused_when_it_changed_since_hashed(tmp_path):
    sibling = _unique(tmp_path)
    _write(tmp_path / "code" / f"{sibling}.py", "VALUE = 1\n")
    module = _write(tmp_path / "code" / "module.py", f"import {sibling}\n\ndef value():\n    return {sibling}.VALUE\n")
    node = RunsUserCode(module_file=module)
    params = to_jsonable(node.params)
    root = str(tmp_path / "root")
    _, parts = driver.cache_key(node, {}, params)
    staged = driver.stage_user_code(node, params, root, hashed=parts)["module_file"]
    folder = fs.dirname(staged)
    assert fs.dirname(folder) == fs.join(root, driver.CODE_DIR) and fs.is_complete(folder)
    assert sorted(os.listdir(folder)) == sorted([fs.COMPLETE_MARKER, "module.py", f"{sibling}.py"])
    assert driver.stage_user_code(node, params, root, hashed=parts)["module_file"] == staged
    assert os.listdir(fs.join(root, driver.CODE_DIR)) == [fs.basename(folder)]  # no partial folder left
    assert load_user_function("node", "value", module_file=staged)() == 1
    # Edited between the key and the staging: refused, not run under the old key.
    _write(tmp_path / "code" / f"{sibling}.py", "VALUE = 2\n")
    with pytest.raises(ExecutorError, match=f"{sibling}.py changed after this run computed"):
        driver.stage_user_code(node, params, root, hashed=parts)
    _, new_parts = driver.cache_key(node, {}, params)
    restaged = driver.stage_user_code(node, params, root, hashed=new_parts)["module_file"]
    assert restaged != staged and load_user_function("node", "value", module_file=restaged)() == 2


# Code named by import path runs from a snapshot too.


def _run_imported_value(inputs: dict, outputs: dict, params: _ImportParams, ctx: ExecutionContext) -> str:
    value = load_user_function(ctx.component_id, "value", import_path=params.value_fn)()
    fs.write_text(fs.join(outputs["model"][0].uri, "value.txt"), value)
    return value


@dataclasses.dataclass(frozen=True)
class _ImportParams:
    value_fn: str = ""


class RunsImportedCode(Component):
    """A component that imports `value()` by import path when it runs."""

    OUTPUTS = {"model": Model}
    Params = _ImportParams
    EXECUTOR = staticmethod(_run_imported_value)
    IMPORT_PATH_PARAMS = ("value_fn",)


# A package on sys.path: a package-relative import of a module, a name its
# __init__ defines, and a path built from __file__.
USER_PACKAGE = {
    "__init__.py": "KIND = 'from the package'\n",
    "helpers.py": "VALUE = 'hashed'\n",
    "user_code.py": """
        import os
        from . import KIND, helpers

        HERE = os.path.basename(os.path.dirname(__file__))

        def value():
            return f"{helpers.VALUE} {KIND} {HERE}"
    """,
}


def _user_package(tmp_path, monkeypatch) -> str:
    name = _unique(tmp_path)
    for file, text in USER_PACKAGE.items():
        _write(tmp_path / "src" / name / file, text)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return name


def test_code_named_by_import_path_edited_during_the_run_does_not_change_what_runs(tmp_path, monkeypatch):
    package = _user_package(tmp_path, monkeypatch)
    pipeline = Pipeline("imported", str(tmp_path / "root"), [RunsImportedCode(value_fn=f"{package}.user_code.value")])

    def edit_once_started(line: str) -> None:
        if "running" in line:  # its key is taken and its code staged: the edit belongs to the next run
            _write(tmp_path / "src" / package / "helpers.py", "VALUE = 'edited'\n")

    result = LocalRunner(launcher="thread", echo=edit_once_started).run(pipeline)
    assert "'edited'" in (tmp_path / "src" / package / "helpers.py").read_text()
    [model] = result.outputs("runs_imported_code", "model")
    # The hashed code ran, its relative imports and __file__ as imported by name.
    assert fs.read_text(fs.join(model.uri, "value.txt")) == f"hashed from the package {package}"
    [snapshot] = fs.glob(fs.join(str(tmp_path / "root"), driver.CODE_DIR, "*", "helpers.py"))
    assert "'hashed'" in fs.read_text(snapshot)
    again = LocalRunner(launcher="thread", echo=lambda line: None).run(pipeline)
    assert again.nodes["runs_imported_code"].rerun_reason == ["code file helpers.py changed"]
    [model] = again.outputs("runs_imported_code", "model")
    assert fs.read_text(fs.join(model.uri, "value.txt")) == f"edited from the package {package}"


def test_import_path_code_changed_since_hashed_is_refused_and_installed_code_is_imported_by_name(
        tmp_path, monkeypatch):
    package = _user_package(tmp_path, monkeypatch)
    node = RunsImportedCode(value_fn=f"{package}.user_code.value")
    params = to_jsonable(node.params)
    root = str(tmp_path / "root")
    _, parts = driver.cache_key(node, {}, params)
    assert {"code:user_code.py", "code:helpers.py"} <= set(parts)
    staged = driver.stage_user_code(node, params, root, hashed=parts)["value_fn"]
    assert staged != params["value_fn"]
    assert load_user_function("node", "value", import_path=staged)() == f"hashed from the package {package}"
    # Edited between the key and the staging: refused, not run under the old key.
    _write(tmp_path / "src" / package / "helpers.py", "VALUE = 'edited'\n")
    with pytest.raises(ExecutorError, match="helpers.py changed after this run computed"):
        driver.stage_user_code(node, params, root, hashed=parts)
    # Left to be imported by name, as hashed: an installed distribution's
    # module, the standard library's, and one importing from above its package.
    _write(tmp_path / "src" / package / "sub" / "__init__.py", "")
    _write(tmp_path / "src" / package / "sub" / "deep.py", "from .. import helpers\n\ndef value():\n    return 1\n")
    for import_path in ("_pytest.python_api.approx", "json.dumps", f"{package}.sub.deep.value"):
        other = RunsImportedCode(value_fn=import_path)
        other_params = to_jsonable(other.params)
        assert driver.stage_user_code(other, other_params, root, driver.cache_key(other, {}, other_params)[1]) \
            == other_params


# A function component's pipeline file: a child process loads its class from
# the file's snapshot.
PIPELINE_FILE = """
    import os
    from conveyor import Pipeline
    from conveyor.artifacts import Model
    from conveyor.components import OutputArtifact, component
    import {helper}

    HERE = os.path.dirname(os.path.abspath(__file__))
    VALUE = "hashed"

    @component
    def report(out: OutputArtifact[Model]) -> str:
        with open(os.path.join(out.uri, "value.txt"), "w") as f:
            f.write(f"{{VALUE}}+{{{helper}.VALUE}} {{os.path.basename(HERE)}}")
        return VALUE

    pipeline = Pipeline("fn_snapshot", os.path.join(HERE, "root"), [report()])
"""


def test_a_function_components_pipeline_file_edited_during_the_run_does_not_change_what_runs(tmp_path):
    from conveyor.cli import load_pipeline

    helper = _unique(tmp_path)
    folder = tmp_path / "project"
    pipeline_file = _write(folder / "pipeline.py", PIPELINE_FILE.format(helper=helper))
    _write(folder / f"{helper}.py", "VALUE = 'hashed'\n")

    def edit_once_started(line: str) -> None:
        if "running" in line:  # its key is taken and its code staged: the edit belongs to the next run
            _write(folder / "pipeline.py", PIPELINE_FILE.format(helper=helper).replace('"hashed"', '"edited"'))
            _write(folder / f"{helper}.py", "VALUE = 'edited'\n")

    result = LocalRunner(launcher="process", echo=edit_once_started).run(load_pipeline(pipeline_file))
    assert '"edited"' in (folder / "pipeline.py").read_text()
    [model] = result.outputs("report", "out")
    # The child loaded the hashed file and sibling, with __file__ where the pipeline file is.
    assert fs.read_text(fs.join(model.uri, "value.txt")) == "hashed+hashed project"
    [snapshot] = fs.glob(fs.join(str(folder / "root"), driver.CODE_DIR, "*", "pipeline.py"))
    assert 'VALUE = "hashed"' in fs.read_text(snapshot)
    again = LocalRunner(launcher="process", echo=lambda line: None).run(load_pipeline(pipeline_file))
    assert sorted(again.nodes["report"].rerun_reason) == sorted(["code file pipeline.py changed",
                                                                f"code file {helper}.py changed"])
    [model] = again.outputs("report", "out")
    assert fs.read_text(fs.join(model.uri, "value.txt")) == "edited+edited project"
    # Edited between the key and the staging: refused.
    node = load_pipeline(pipeline_file).component("report")
    _, parts = driver.cache_key(node, {}, to_jsonable(node.params))
    _write(folder / "pipeline.py", PIPELINE_FILE.format(helper=helper).replace('"hashed"', '"third"'))
    with pytest.raises(ExecutorError, match="pipeline.py changed after this run computed"):
        driver.stage_class_file(node, str(folder / "root"), hashed=parts)


# -- the process launcher's warm processes -----------------------------------------------------


@component
def probe(out: OutputArtifact[Model], upstream: InputArtifact[Model] = None) -> str:
    with open(os.path.join(out.uri, "probe.json"), "w") as f:
        json.dump({"pid": os.getpid(), "argv": sys.argv[1:]}, f)
    return "probed"


@component
def crash(out: OutputArtifact[Model]) -> None:
    print("about to crash", file=sys.stderr, flush=True)
    os._exit(3)


def _launcher_processes() -> list[tuple[int, str]]:
    """This process's children that are launchers: (pid, state), zombies too."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and (b"conveyor.launch" in cmdline or stat[0] == "Z"):
            found.append((int(pid), stat[0]))
    return found


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """The launcher's scratch folders go here, to be counted."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _probes(result) -> dict[str, dict]:
    return {node: json.loads(open(os.path.join(result.outputs(node, "out")[0].uri, "probe.json")).read())
            for node in ("first", "second", "third")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_launcher_serves_one_node_per_process_and_leaves_nothing(tmp_path, private_tmp):
    first = probe().with_id("first")
    first.enable_cache = False  # runs every time, while the others come from the cache
    pipeline = Pipeline("warm", str(tmp_path / "root"), [first, probe().with_id("second"), probe().with_id("third")])
    before = _launcher_processes()  # zombies other tests may have left
    # One node at a time (one spare): which process each node gets is certain.
    result = LocalRunner(launcher="process", max_workers=1, echo=print).run(pipeline)
    seen = _probes(result)
    pids = {p["pid"] for p in seen.values()}
    assert len(pids) == 3 and os.getpid() not in pids  # a process of its own for each node
    # The first node started a process for itself; the others took processes
    # started ahead, which imported the stack while waiting.
    assert seen["first"]["argv"] == ["--serve"]
    assert seen["second"]["argv"] == seen["third"]["argv"] == ["--serve", "--warm"]
    assert _launcher_processes() == before and os.listdir(private_tmp) == []
    # Again: `first` runs, the spare started for the cached nodes is killed and reaped.
    again = LocalRunner(launcher="process", max_workers=1, echo=print).run(pipeline)
    assert [again.nodes[n].state for n in ("first", "second", "third")] == ["COMPLETE", "CACHED", "CACHED"]
    assert _launcher_processes() == before and os.listdir(private_tmp) == []


def test_a_launcher_process_that_dies_reads_as_before(tmp_path, private_tmp):
    pipeline = Pipeline("crash", str(tmp_path / "root"), [crash()])
    result = LocalRunner(launcher="process", echo=print).run(pipeline, raise_on_failure=False)
    node = result.nodes["crash"]
    assert node.state == "FAILED"
    assert node.error.startswith("crash: the launcher process exited with code 3 without a result:")
    assert "about to crash" in node.error
    assert os.listdir(private_tmp) == []


SLOW_PIPELINE = textwrap.dedent('''
    import os, time
    from conveyor import Pipeline
    from conveyor.artifacts import Model
    from conveyor.components import component, InputArtifact, OutputArtifact

    HERE = os.path.dirname(os.path.abspath(__file__))

    @component
    def quick(out: OutputArtifact[Model]) -> None:
        pass

    @component
    def slow(upstream: InputArtifact[Model], out: OutputArtifact[Model]) -> None:
        open(os.path.join(HERE, "started"), "w").write(str(os.getpid()))
        time.sleep(120)

    @component
    def later(upstream: InputArtifact[Model], out: OutputArtifact[Model]) -> None:
        pass

    q = quick()
    s = slow(upstream=q.outputs["out"])
    pipeline = Pipeline("slow", os.path.join(HERE, "root"), [q, s, later(upstream=s.outputs["out"])])
''')


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
        except OSError:
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_run_kills_its_node_and_its_warm_processes(tmp_path):
    (tmp_path / "pipeline.py").write_text(SLOW_PIPELINE)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "run", "pipeline.py", "--launcher", "process"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "slow never started"
            time.sleep(0.1)
        worker = int((tmp_path / "started").read_text())
        launched = _descendants(proc.pid)
        assert worker in launched and len(launched) >= 2  # the node's process, and a spare for `later`
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "CANCELED" in out
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in launched) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in launched if os.path.exists(f"/proc/{p}")]
    assert os.listdir(scratch) == []
