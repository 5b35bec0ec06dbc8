"""Function components: `@component` turns a typed Python function into a
component whose artifacts and parameters are recorded in MLMD like the rest.

    @component
    def count_rows(examples: InputArtifact[Examples], report: OutputArtifact[Model],
                   threshold: Parameter[int] = 10) -> None:
        ...

    counter = count_rows(examples=example_gen.outputs["examples"], threshold=5)

Inputs are passed to the function as one Artifact each (None for an optional
input left unwired); outputs as the Artifact whose `uri` directory to fill.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from collections.abc import Callable
from typing import Any

from conveyor.artifacts import Artifact
from conveyor.components.base import user_code_files
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component, Input

__all__ = ["component", "InputArtifact", "OutputArtifact", "Parameter"]


class _Annotation:
    def __init__(self, kind: str, type_: Any) -> None:
        self.kind = kind
        self.type = type_


class InputArtifact:
    """`InputArtifact[Examples]`: an input channel of that type."""

    def __class_getitem__(cls, item: type[Artifact]) -> _Annotation:
        return _Annotation("input", item)


class OutputArtifact:
    """`OutputArtifact[Model]`: an output of that type."""

    def __class_getitem__(cls, item: type[Artifact]) -> _Annotation:
        return _Annotation("output", item)


class Parameter:
    """`Parameter[int]`: a typed parameter (a plain `int` annotation works too)."""

    def __class_getitem__(cls, item: Any) -> _Annotation:
        return _Annotation("parameter", item)


def component(fn: Callable[..., Any] | None = None, *, version: str = "1") -> Any:
    """Make a component class from a typed function (see the module doc)."""
    if fn is None:
        return lambda f: component(f, version=version)
    where = f"@component {fn.__module__}.{fn.__qualname__}"
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 - re-raised with the function named
        raise PipelineDefinitionError(f"{where}: cannot read its type annotations: {e}") from e
    inputs: dict[str, Input] = {}
    outputs: dict[str, type[Artifact]] = {}
    fields: list[tuple[str, Any, Any]] = []
    for name, p in inspect.signature(fn).parameters.items():
        if name not in hints:
            raise PipelineDefinitionError(
                f"{where}: argument {name!r} has no annotation. Annotate it as InputArtifact[T], "
                f"OutputArtifact[T], or a parameter type such as int, float, str, bool."
            )
        hint = hints[name]
        if isinstance(hint, _Annotation) and hint.kind == "input":
            inputs[name] = Input(hint.type, optional=p.default is None)
        elif isinstance(hint, _Annotation) and hint.kind == "output":
            outputs[name] = hint.type
        else:
            tp = hint.type if isinstance(hint, _Annotation) else hint
            default = dataclasses.field(default=p.default) if p.default is not inspect.Parameter.empty else None
            fields.append((name, tp, default) if default is not None else (name, tp))  # type: ignore[arg-type]
    # Fields without defaults must come first in a dataclass.
    fields.sort(key=lambda f: len(f) == 3)
    params_cls = dataclasses.make_dataclass(f"{fn.__name__}_Params", fields, frozen=True)
    params_cls.__module__ = fn.__module__

    def execute(in_arts: dict, out_arts: dict, params: Any, ctx: Any) -> Any:
        kwargs: dict[str, Any] = {k: (in_arts.get(k) or [None])[0] for k in inputs}
        kwargs.update({k: out_arts[k][0] for k in outputs})
        kwargs.update({f.name: getattr(params, f.name) for f in dataclasses.fields(params)})
        return fn(**kwargs)

    source = inspect.getsourcefile(fn)
    # One type name however the file is run (`conveyor run` loads a pipeline
    # file as "conveyor_pipeline", `python pipeline.py` as "__main__"): the
    # file's name and the function's.
    stem = os.path.splitext(os.path.basename(source))[0] if source else fn.__module__
    type_name = f"{stem}.{fn.__qualname__}"

    def code_files(self: Component) -> list[str]:
        return user_code_files(source) if source else []

    cls = type(
        fn.__name__,
        (Component,),
        {
            "__doc__": fn.__doc__,
            "__module__": fn.__module__,
            "INPUTS": inputs,
            "OUTPUTS": outputs,
            "Params": params_cls,
            "EXECUTOR": staticmethod(execute),
            "VERSION": version,
            "code_files": code_files,
            "type_name": classmethod(lambda cls: type_name),
            "function": staticmethod(fn),
        },
    )
    # Where the function is (`f.<locals>.g` inside a function), for errors and launchers.
    cls.__qualname__ = fn.__qualname__
    return cls
