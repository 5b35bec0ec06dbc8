"""Run one node anywhere: the seam between an orchestrator and an executor.

    python -m conveyor.launch INVOCATION.json [--result RESULT.json]

An `Invocation` is everything a node's executor needs, as JSON: which
component and executor, its input and output artifacts (URIs and
properties), its typed parameters, its Beam flags and the run's facts. The
launcher runs the executor and writes an `InvocationResult`: the output
artifacts as the executor left them (URIs, properties) and its one-line note,
or the error. It never touches MLMD: recording the execution is the
orchestrator's job (see `conveyor.pipeline.driver`), so any orchestrator
(LocalRunner, Kubeflow, Airflow, Vertex) or a container running a Trainer
alone can use it.

The result goes to `--result` (a local path or an object-store URI), else
to stdout. Exit code 0 when the executor succeeded, 1 when it failed, 2 when
the invocation itself cannot be read. An invocation with a `log_file` has
the process's whole output (file descriptors 1 and 2) appended to that
file before its executor runs (a result for stdout still goes there).

    python -m conveyor.launch --serve [--warm]

is the same for a process started before its node is known (LocalRunner's
launcher processes): it reads one request, a JSON line
`{"invocation": PATH, "result": PATH}`, from stdin, runs it and exits; at
end of input without a request it exits 0. With `--warm` it first imports
the stack the standard components use (`WARM_MODULES`: TensorFlow with Keras
2, TFDV, tf.Transform, TFMA, Beam, pyarrow; never user code), which takes
seconds, while it waits. Each process runs one invocation, so nothing of
one node (TF state, modules, sys.path) reaches another.

    python -m conveyor.launch --fork-server --reply-fd N

is LocalRunner's default launcher: it imports that stack once and forks a
child per request, which runs it as above (see `conveyor.forkserver`).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import importlib
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from conveyor import fs
from conveyor.artifacts import Artifact
from conveyor.components.base import ExecutionContext, import_user_file, use_keras_2
from conveyor.errors import ConveyorError

__all__ = [
    "Invocation",
    "InvocationResult",
    "execute",
    "describe_error",
    "failure",
    "component_class",
    "artifacts_to_json",
    "artifacts_from_json",
    "main",
    "warm_up",
    "run_file",
    "exit_process",
    "finish_process",
    "WARM_MODULES",
    "NODE_GC_THRESHOLDS",
    "SCRIPT_MODULE",
    "NODE_ENV",
]

# What `--serve --warm` imports before its request comes: what the standard
# components' executors import, so a node pays none of it. User code is
# never among them.
WARM_MODULES = (
    "pyarrow", "pyarrow.compute", "pyarrow.csv", "pyarrow.parquet",
    "tensorflow", "tf_keras", "apache_beam", "apache_beam.runners.direct.direct_runner",
    "tensorflow_data_validation", "tensorflow_transform", "tensorflow_transform.beam", "tfx_bsl.public.tfxio",
    "tensorflow_model_analysis",
    "conveyor.components.example_gen", "conveyor.components.statistics_gen", "conveyor.components.schema_gen",
    "conveyor.components.example_validator", "conveyor.components.transform", "conveyor.components.trainer",
    "conveyor.components.evaluator", "conveyor.components.pusher",
)
# Python's collector thresholds in a node's process (the default is 700,
# 10, 10). Tracing TensorFlow graphs (Transform, Trainer, Evaluator) makes
# millions of objects, and at the default a node scans them again and
# again: 0.21 s of collections in the taxi Trainer and 0.34 s in its
# Transform at 15k rows, 0.04 and 0.09 s with these (peak RSS +13 MB).
# Cycles are still collected, less often. The run's own process and the
# thread launcher keep the user's settings.
NODE_GC_THRESHOLDS = (50_000, 10, 10)
# The module name a node's process gives the script that started the run.
SCRIPT_MODULE = "conveyor_script"
# Set in a node's process (the component id): a pipeline run started there
# is an error (see LocalRunner.run), not a run within a run.
NODE_ENV = "CONVEYOR_NODE_PROCESS"
# One thread at a time resolves a component class from its file, so none
# sees a module another is still executing.
_CLASS_LOCK = threading.Lock()


@dataclasses.dataclass
class Invocation:
    """One node's run, as plain data (see the module doc)."""

    component_id: str
    component_class: str  # "module:QualName"
    executor: str  # "module:function", or "<component_class>.EXECUTOR" for function components
    parameters: dict[str, Any]  # the Params dataclass as JSON (conveyor.pipeline.dsl.to_jsonable)
    inputs: dict[str, list[dict[str, Any]]]  # key -> artifacts (Artifact.to_json)
    outputs: dict[str, list[dict[str, Any]]]
    beam_pipeline_args: list[str] = dataclasses.field(default_factory=list)
    pipeline_name: str = "adhoc"
    pipeline_root: str = ""
    execution_id: int = 0
    tmp_dir: str = ""
    # The file defining the component class when its module cannot be
    # imported by name (a function component in a pipeline file).
    code_file: str = ""
    # When code_file is a snapshot of the pipeline's code (under <root>/_code/):
    # the file it was taken from, the module's __file__.
    code_origin: str = ""
    # A local file the launcher process appends all its output to (fds 1
    # and 2: Python, logging, Beam, TensorFlow's C++ logs) before the
    # executor runs; empty: output stays where the process's goes.
    log_file: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Invocation:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"invocation has unknown fields {unknown}; it expects {sorted(names)}")
        return cls(**data)


@dataclasses.dataclass
class InvocationResult:
    """What a node's run produced: the output artifacts as the executor left
    them, its note, or its error (then `outputs` is empty)."""

    outputs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    note: str = ""
    error: str = ""
    # The failure may pass on a retry: not a ConveyorError (bad input or
    # user code), but e.g. a lost connection or a worker that died.
    transient: bool = False

    @property
    def succeeded(self) -> bool:
        return not self.error

    def output_artifacts(self) -> dict[str, list[Artifact]]:
        return artifacts_from_json(self.outputs)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InvocationResult:
        return cls(**json.loads(text))


def artifacts_to_json(artifacts: dict[str, list[Artifact]]) -> dict[str, list[dict[str, Any]]]:
    return {key: [a.to_json() for a in arts] for key, arts in artifacts.items()}


def artifacts_from_json(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[Artifact]]:
    return {key: [Artifact.from_json(a) for a in arts] for key, arts in data.items()}


def component_class(invocation: Invocation) -> type:
    """The component class an invocation names, imported by module name, or
    loaded from `code_file` when the module is not importable here."""
    module_name, _, qualname = invocation.component_class.partition(":")
    if module_name == "__main__" and invocation.code_file:
        # Defined in the script that started the run (`python pipeline.py`):
        # here `__main__` is the launcher, so the script loads under another
        # name, which also keeps its `if __name__ == "__main__":` part from running.
        module_name = SCRIPT_MODULE
    with _CLASS_LOCK:
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                if not invocation.code_file:
                    raise
                # It may import its siblings, as when the CLI loaded it: they
                # are found beside it without adding to sys.path.
                module = import_user_file(module_name, invocation.code_file, origin=invocation.code_origin or None)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _executor(cls: type, invocation: Invocation) -> Callable[..., Any]:
    executor = cls.EXECUTOR  # type: ignore[attr-defined]
    if callable(executor):
        return executor
    module_name, _, attr = (executor or invocation.executor).partition(":")
    return getattr(importlib.import_module(module_name), attr)


def execute(invocation: Invocation, cls: type | None = None,
            cancelled: threading.Event | None = None) -> InvocationResult:
    """Run the node's executor here, on fresh artifacts built from the
    invocation; its scratch directory is removed afterwards. `cls` is the
    component class when the caller has it (else it is imported);
    `cancelled` is set by the caller when the run is stopped. Raises what
    the executor raised."""
    from conveyor.pipeline.dsl import from_jsonable

    use_keras_2()
    cls = cls or component_class(invocation)
    params = from_jsonable(cls.Params, invocation.parameters)  # type: ignore[attr-defined]
    inputs, outputs = artifacts_from_json(invocation.inputs), artifacts_from_json(invocation.outputs)
    ctx = ExecutionContext(
        component_id=invocation.component_id,
        pipeline_name=invocation.pipeline_name,
        pipeline_root=invocation.pipeline_root,
        execution_id=invocation.execution_id,
        beam_pipeline_args=list(invocation.beam_pipeline_args),
        tmp_dir=invocation.tmp_dir,
    )
    if cancelled is not None:
        ctx.cancelled = cancelled
    if ctx.tmp_dir:
        fs.makedirs(ctx.tmp_dir)
    try:
        note = _executor(cls, invocation)(inputs, outputs, params, ctx)
    finally:
        if ctx.tmp_dir:
            fs.rmtree(ctx.tmp_dir)
    return InvocationResult(outputs=artifacts_to_json(outputs), note=str(note or ""))


def describe_error(component_id: str, error: BaseException) -> str:
    """An executor's error as recorded and shown: a ConveyorError's own
    message (it names the component and what to do), else the exception
    with the end of its traceback."""
    if isinstance(error, ConveyorError):
        return str(error)
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:])
    return f"{component_id}: {type(error).__name__}: {error}\n{tb}"


def failure(component_id: str, error: BaseException) -> InvocationResult:
    """The result of a node whose executor raised `error`."""
    return InvocationResult(error=describe_error(component_id, error), transient=not isinstance(error, ConveyorError))


def warm_up(modules: Sequence[str] = WARM_MODULES, stop: threading.Event | None = None) -> None:
    """Import the stack before a node is known (`--serve --warm`): Keras 2
    first, as `execute` would; a module not installed is skipped (the
    executor that needs it reports it). Stops between modules once `stop`
    is set."""
    use_keras_2()
    for name in modules:
        if stop is not None and stop.is_set():
            return
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# WARM_MODULES that do not import Beam.
_BEFORE_BEAM = WARM_MODULES[:WARM_MODULES.index("apache_beam")]


def _server_import(name: str) -> object:
    """How the fork server, a process of one thread, imports a module of
    WARM_MODULES: Beam, whichever module brings it in first (a node's needs
    may come before Beam's turn), without the Google Cloud IO it
    re-exports, until a node uses it (`beam_tuning.import_beam`)."""
    if name not in _BEFORE_BEAM:
        from conveyor.components import beam_tuning

        beam_tuning.import_beam()
    return importlib.import_module(name)


class _WarmUp:
    """`warm_up` in a thread of the lowest priority, so a process waiting
    for its node takes only CPU time the running nodes leave idle. The
    priority is the thread's own (Linux keeps one per thread): the node
    runs in the main thread at normal priority, and the threads it starts
    inherit that. pyarrow, whose import starts threads that work later, is
    imported first, by the main thread; the rest of the stack starts none
    that do."""

    def __init__(self) -> None:
        import pyarrow  # noqa: F401 - its threads start now, at normal priority

        self._stop = threading.Event()
        self._tid: int | None = None
        self._thread = threading.Thread(target=self._run, name="conveyor-warm-up", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        self._renice(19)
        warm_up(stop=self._stop)

    def _renice(self, value: int) -> None:
        if sys.platform.startswith("linux") and self._tid is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, self._tid, value)
            except OSError:
                pass  # raising a priority needs CAP_SYS_NICE: it goes on as it was

    def stop(self) -> None:
        """No module after the one being imported; that one at normal
        priority where allowed, as the node may be waiting for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._renice(0)


def _request(line: str) -> tuple[str, str | None]:
    """(invocation path, result path) from a `--serve` request line."""
    request = json.loads(line)
    if not isinstance(request, dict) or not isinstance(request.get("invocation"), str):
        raise ValueError(f'expected {{"invocation": PATH, "result": PATH}}, got {line.strip()!r}')
    return request["invocation"], request.get("result")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("invocation", nargs="?", help="an invocation JSON file (a local path or an object-store URI)")
    parser.add_argument("--result", help="where to write the result JSON (default: stdout)")
    parser.add_argument("--serve", action="store_true",
                        help='read one request {"invocation": PATH, "result": PATH} as a JSON line from stdin, '
                             "run it and exit")
    parser.add_argument("--warm", action="store_true",
                        help="with --serve: import TensorFlow, TFDV, TFT, TFMA, Beam and pyarrow while waiting")
    parser.add_argument("--fork-server", action="store_true",
                        help="import the stack, then fork a child per request line read from stdin "
                             "(see conveyor.forkserver)")
    parser.add_argument("--reply-fd", type=int, help="with --fork-server: the file descriptor it answers on")
    args = parser.parse_args(argv)
    if args.fork_server:
        if args.reply_fd is None or args.invocation or args.serve:
            parser.error("--fork-server takes --reply-fd and nothing else")
        from conveyor import forkserver

        use_keras_2()  # before TensorFlow is imported, as `execute` would
        return forkserver.serve(args.reply_fd, WARM_MODULES, run_file, finish_process, load=_server_import)
    if args.serve == bool(args.invocation):
        parser.error("give either an invocation file or --serve")
    if not args.serve:
        return run_file(args.invocation, args.result)
    warm = _WarmUp() if args.warm else None
    line = sys.stdin.readline()
    if warm is not None:
        warm.stop()
    code = 0  # no node for this process after all
    if line.strip():
        try:
            invocation_path, result_path = _request(line)
        except (ValueError, TypeError) as e:
            print(f"error: cannot read the request: {e}", file=sys.stderr)
            invocation_path, result_path, code = "", None, 2
        if invocation_path:
            code = run_file(invocation_path, result_path)
    return code


def exit_process(code: int) -> NoReturn:
    """Leave as soon as the result is written: the atexit functions run and
    output is flushed (`finish_process`), but the interpreter is not torn
    down, which with TensorFlow and Beam loaded takes ~2 s of every node
    (and would wait for a warm-up thread's last import, of no use now).
    tensorflow-io's S3 filesystem also aborts in that teardown (see
    `fs.exit_process`)."""
    finish_process()
    os._exit(code)


def finish_process() -> None:
    """What a node's process does before `os._exit`: the atexit functions, then flush."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def run_file(invocation_path: str, result_path: str | None) -> int:
    """Run one invocation file (its result to `result_path`, else stdout or
    the log); the exit code."""
    try:
        invocation = Invocation.from_json(fs.read_text(invocation_path))
    except (OSError, ValueError, TypeError) as e:
        print(f"error: cannot read invocation {invocation_path}: {e}", file=sys.stderr)
        return 2
    os.environ[NODE_ENV] = invocation.component_id
    gc.set_threshold(*NODE_GC_THRESHOLDS)
    stdout = _output_to(invocation.log_file) if invocation.log_file else None
    try:
        result = execute(invocation)
    except BaseException as e:  # noqa: BLE001 - every failure is reported in the result
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        result = failure(invocation.component_id, e)
    if result_path:
        fs.write_text(result_path, result.to_json())
    elif stdout is not None:
        with open(stdout, "w", encoding="utf-8") as out:
            out.write(result.to_json() + "\n")
    else:
        print(result.to_json())
    return 0 if result.succeeded else 1


def _output_to(log_file: str) -> int:
    """Append all this process's output (fds 1 and 2, so TensorFlow's C++
    logs and Beam's too) to `log_file` from now on; a copy of the stdout it
    replaced. Whatever wrote before (a warm-up's imports) stays where it went."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return saved


if __name__ == "__main__":
    exit_process(main())
