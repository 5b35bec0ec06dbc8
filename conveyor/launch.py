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
the invocation itself cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact
from conveyor.components.base import ExecutionContext, use_keras_2
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
]


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
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if not invocation.code_file:
                raise
            spec = importlib.util.spec_from_file_location(module_name, invocation.code_file)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            # The file may import its siblings, as when the CLI loaded it.
            sys.path.insert(0, os.path.dirname(os.path.abspath(invocation.code_file)))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.pop(0)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("invocation", help="an invocation JSON file (a local path or an object-store URI)")
    parser.add_argument("--result", help="where to write the result JSON (default: stdout)")
    args = parser.parse_args(argv)
    try:
        invocation = Invocation.from_json(fs.read_text(args.invocation))
    except (OSError, ValueError, TypeError) as e:
        print(f"error: cannot read invocation {args.invocation}: {e}", file=sys.stderr)
        return 2
    try:
        result = execute(invocation)
    except BaseException as e:  # noqa: BLE001 - every failure is reported in the result
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        result = failure(invocation.component_id, e)
    if args.result:
        fs.write_text(args.result, result.to_json())
    else:
        print(result.to_json())
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    fs.exit_process(main())
