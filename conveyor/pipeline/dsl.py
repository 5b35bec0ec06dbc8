"""The pipeline DSL: typed channels, components and pipelines, all checked when
they are built so that a wiring mistake fails at definition, not mid-run."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import typing
from collections.abc import Sequence
from typing import Any, ClassVar

from conveyor import fs
from conveyor.artifacts import Artifact
from conveyor.errors import PipelineDefinitionError, closest

__all__ = ["Channel", "Input", "Component", "Pipeline", "NoParams", "to_jsonable", "from_jsonable",
           "type_problem", "default_metadata_path"]


class Channel:
    """A typed stream of artifacts: an output of one component, or (with no
    producer) a placeholder filled by a resolver."""

    def __init__(
        self, type: type[Artifact], producer: Component | None = None, key: str = ""  # noqa: A002
    ) -> None:
        if not (isinstance(type, builtins_type) and issubclass(type, Artifact)):
            raise PipelineDefinitionError(
                f"Channel type must be an Artifact class such as Examples; got {type!r}."
            )
        self.type = type
        self.producer = producer
        self.key = key

    def __repr__(self) -> str:
        where = f"{self.producer.id}.outputs[{self.key!r}]" if self.producer else "unbound"
        return f"Channel({self.type.TYPE_NAME}, {where})"


builtins_type = type


@dataclasses.dataclass(frozen=True)
class Input:
    """The declaration of one input of a component."""

    type: type[Artifact]
    optional: bool = False
    # False for inputs that only speed a run up (an analyzer cache): they do
    # not change the result, so they stay out of the cache key.
    in_cache_key: bool = True


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Component:
    """A step of a pipeline: typed inputs and outputs, typed parameters and an
    executor function `EXECUTOR` ("module:function") imported only at run time.

    Subclasses declare INPUTS, OUTPUTS, Params (a dataclass) and EXECUTOR, and
    are built with keyword arguments, each either an input channel or a field
    of Params. Everything is checked here, at construction.
    """

    INPUTS: ClassVar[dict[str, Input]] = {}
    OUTPUTS: ClassVar[dict[str, type[Artifact]]] = {}
    Params: ClassVar[type] = NoParams
    EXECUTOR: ClassVar[str] = ""
    VERSION: ClassVar[str] = "1"
    USES_BEAM: ClassVar[bool] = False
    # Parameters that name user code files; their content is part of the cache key.
    CODE_PARAMS: ClassVar[tuple[str, ...]] = ()
    # Parameters that name user code by import path ('package.module.function');
    # the module's file is hashed like a module file.
    IMPORT_PATH_PARAMS: ClassVar[tuple[str, ...]] = ()
    # The slow-to-import modules EXECUTOR needs (e.g. "tensorflow_data_validation").
    # The fork server imports them before it forks the node's process, once,
    # the cheaper way it can (see conveyor.forkserver), rather than let the
    # node import them itself.
    EXECUTOR_IMPORTS: ClassVar[tuple[str, ...]] = ()
    # "executor" nodes run EXECUTOR in a worker; "resolver" nodes are answered
    # from MLMD by the orchestrator (see conveyor.components.resolver).
    KIND: ClassVar[str] = "executor"

    def __init__(
        self,
        *,
        id: str | None = None,  # noqa: A002 - the name TFX users know
        enable_cache: bool = True,
        beam_pipeline_args: Sequence[str] | None = None,
        retries: int = 0,
        retry_backoff_seconds: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.id = _check_id(id or _snake(type(self).__name__), type(self).__name__)
        self.enable_cache = enable_cache
        self.beam_pipeline_args = list(beam_pipeline_args or [])
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise PipelineDefinitionError(f"{type(self).__name__}: retries must be an int >= 0, got {retries!r}.")
        # Transient failures (anything but a ConveyorError: a lost connection,
        # a worker that died) are retried this many times, waiting
        # retry_backoff_seconds, then twice that, ...
        self.retries = retries
        self.retry_backoff_seconds = float(retry_backoff_seconds)
        self.inputs: dict[str, Channel] = {}
        param_values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(self.Params)}
        for name, value in kwargs.items():
            if name in self.INPUTS:
                if value is not None:
                    self.inputs[name] = self._check_input(name, value)
            elif name in fields:
                param_values[name] = value
            else:
                known = list(self.INPUTS) + list(fields)
                raise PipelineDefinitionError(
                    f"{self._where()} got an unknown argument {name!r}.{closest(name, known)} "
                    f"It takes inputs {sorted(self.INPUTS) or 'none'} and parameters "
                    f"{sorted(fields) or 'none'}."
                )
        for name, spec in self.INPUTS.items():
            if not spec.optional and name not in self.inputs:
                raise PipelineDefinitionError(
                    f"{self._where()} is missing its required input {name!r} "
                    f"(a channel of {spec.type.TYPE_NAME}). Pass {name}=<component>.outputs[...]."
                )
        self.params = self._build_params(param_values)
        self.check()
        self.outputs: dict[str, Channel] = {
            key: Channel(artifact_type, self, key) for key, artifact_type in self.output_types().items()
        }

    # -- hooks for subclasses ------------------------------------------------
    def check(self) -> None:
        """Component-specific checks at construction; raise PipelineDefinitionError."""

    def output_types(self) -> dict[str, type[Artifact]]:
        """The output keys and types; a component whose outputs depend on its
        parameters (a resolver of any type) overrides this."""
        return dict(self.OUTPUTS)

    @classmethod
    def type_name(cls) -> str:
        """The component's type, as MLMD records it and the cache key holds it."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def code_files(self) -> list[str]:
        """The user code files this component loads (their content is cached):
        its module files, and the files of the modules its import paths name."""
        files = []
        for name in self.CODE_PARAMS:
            value = getattr(self.params, name, None)
            if value and isinstance(value, str) and value.endswith(".py"):
                files.append(fs.abspath(value))
        for name in self.IMPORT_PATH_PARAMS:
            value = getattr(self.params, name, None)
            if value and isinstance(value, str):
                found = _module_file(value.rpartition(".")[0])
                if found:
                    files.append(found)
        return files

    def staging_paths(self, params: dict[str, Any], execution_id: int) -> list[str]:
        """Paths outside its output URIs where an execution of this component
        (with these parameters, as JSON) keeps partial work, removed when the
        execution is found abandoned by a process that died."""
        del params, execution_id
        return []

    def external_fingerprints(self) -> dict[str, str]:
        """Fingerprints of data the component reads from outside the pipeline
        (ExampleGen's input files), so new data invalidates the cache."""
        return {}

    # -- helpers ---------------------------------------------------------------
    def _require_user_code(self, function: str) -> None:
        """Exactly one of the parameters module_file= (a file defining
        `function`) and `function`= (an import path)."""
        module_file, import_path = self.params.module_file, getattr(self.params, function)
        if bool(module_file) == bool(import_path):
            raise PipelineDefinitionError(
                f"{self._where()} needs exactly one of module_file= (a Python file defining {function}) "
                f"or {function}= (an import path 'package.module.{function}'); "
                f"got {'both' if module_file else 'neither'}."
            )

    def with_id(self, id: str) -> Component:  # noqa: A002
        self.id = _check_id(id, type(self).__name__)
        return self

    def _where(self) -> str:
        return f"{type(self).__name__} {self.id!r}" if hasattr(self, "id") else type(self).__name__

    def _check_input(self, name: str, value: Any) -> Channel:
        spec = self.INPUTS[name]
        if isinstance(value, Component):
            raise PipelineDefinitionError(
                f"{self._where()} input {name!r} got the component {value.id!r} itself; pass one "
                f"of its outputs, e.g. {value.id}.outputs[{next(iter(value.outputs), '...')!r}]."
            )
        if not isinstance(value, Channel):
            raise PipelineDefinitionError(
                f"{self._where()} input {name!r} expects a channel of {spec.type.TYPE_NAME}, "
                f"got {type(value).__name__} {value!r}. Pass <component>.outputs[<key>]."
            )
        if not issubclass(value.type, spec.type):
            src = f" from {value.producer.id}.outputs[{value.key!r}]" if value.producer else ""
            matching = []
            if value.producer:
                matching = [k for k, c in value.producer.outputs.items() if issubclass(c.type, spec.type)]
            hint = (
                f" {value.producer.id} has a matching output: {matching[0]!r}." if matching else ""
            )
            raise PipelineDefinitionError(
                f"{self._where()} input {name!r} expects {spec.type.TYPE_NAME}, got a channel of "
                f"{value.type.TYPE_NAME}{src}.{hint}"
            )
        return value

    def _build_params(self, values: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(self.Params)
        for f in dataclasses.fields(self.Params):
            if f.name not in values:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise PipelineDefinitionError(
                        f"{self._where()} is missing its required parameter {f.name!r} "
                        f"({_type_name(hints[f.name])})."
                    )
                continue
            problem = type_problem(values[f.name], hints[f.name])
            if problem:
                raise PipelineDefinitionError(
                    f"{self._where()} parameter {f.name!r} expects {_type_name(hints[f.name])}, "
                    f"got {problem}."
                )
        return self.Params(**values)

    def upstream(self) -> list[Component]:
        seen: dict[int, Component] = {}
        for channel in self.inputs.values():
            if channel.producer is not None:
                seen[id(channel.producer)] = channel.producer
        return list(seen.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_id(component_id: Any, kind: str) -> str:
    """A component id names folders under the pipeline root: letters,
    digits, '_', '.', '-', not starting with '.' (no '..', no '/')."""
    if not isinstance(component_id, str) or not _ID.fullmatch(component_id) or ".." in component_id:
        raise PipelineDefinitionError(
            f"{kind} id {component_id!r} is not allowed: an id names the component's folder under the "
            f"pipeline root, so it must be letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit, without '..' or '/' (e.g. 'trainer_2')."
        )
    return component_id


def _module_file(module_name: str) -> str | None:
    """The source file of an importable module, found without running it
    (its parent packages are imported), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    return origin if origin and origin.endswith(".py") else None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def type_problem(value: Any, tp: Any) -> str | None:
    """None when `value` fits the annotation `tp`, else a description of it."""
    if tp is Any:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if any(type_problem(value, a) is None for a in args):
            return None
        return f"{type(value).__name__} {value!r}"
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return f"{type(value).__name__} {value!r}"
        for item in value:
            if args and args[0] is not Ellipsis and type_problem(item, args[0]):
                return f"a list holding {type(item).__name__} {item!r}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{type(value).__name__} {value!r}"
        return None
    if tp is type(None):
        return None if value is None else f"{type(value).__name__} {value!r}"
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if tp is int and isinstance(value, bool):
        return f"bool {value!r}"
    if isinstance(tp, type) and not isinstance(value, tp):
        return f"{type(value).__name__} {value!r}"
    return None


def to_jsonable(value: Any) -> Any:
    """Typed parameter values as plain JSON data, for MLMD, the IR and the
    cache key. Dataclasses become dicts, protos their JSON form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "DESCRIPTOR") and hasattr(value, "SerializeToString"):
        from google.protobuf import json_format

        return {
            "@proto": value.DESCRIPTOR.full_name,
            "value": json_format.MessageToDict(value, preserving_proto_field_name=True),
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cannot record parameter value of type {type(value).__name__}: {value!r}")


def from_jsonable(tp: Any, value: Any) -> Any:
    """The typed value that `to_jsonable` turned into `value`, given its
    annotation `tp` (a Params dataclass, a field's type): dataclasses,
    enums, protos, lists, tuples and dicts come back as they were, so a
    node's parameters survive a trip through JSON (an invocation file)."""
    if value is None:
        return None
    if isinstance(value, dict) and "@proto" in value:
        return _proto_from_json(value)
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in args if a is not type(None)]
        # A dict goes to the dataclass whose fields hold all its keys.
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                if set(value) <= {f.name for f in dataclasses.fields(option)}:
                    return from_jsonable(option, value)
        for option in options:
            if not dataclasses.is_dataclass(option) and type_problem(value, option) is None:
                return from_jsonable(option, value)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{name: from_jsonable(hints.get(name, Any), v) for name, v in value.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        item = args[0] if args and args[0] is not Ellipsis else Any
        items = [from_jsonable(item, v) for v in value]
        # Sequence fields hold tuples: the frozen configs' defaults are tuples.
        return items if origin is list or tp is list else tuple(items)
    if origin is dict and args:
        return {k: from_jsonable(args[1], v) for k, v in value.items()}
    return value


def _proto_from_json(value: dict[str, Any]) -> Any:
    from google.protobuf import json_format, symbol_database

    name = value["@proto"]
    database = symbol_database.Default()
    try:
        cls = database.GetSymbol(name)
    except KeyError:
        # Import the module that defines the protos Conveyor's parameters use.
        import importlib

        for prefix, module in _PROTO_MODULES.items():
            if name.startswith(prefix):
                importlib.import_module(module)
        cls = database.GetSymbol(name)
    return json_format.ParseDict(value["value"], cls())


_PROTO_MODULES = {
    "tensorflow_model_analysis.": "tensorflow_model_analysis.proto.config_pb2",
    "tensorflow.metadata.v0.": "tensorflow_metadata.proto.v0.schema_pb2",
}


class Pipeline:
    """Components wired together, with where they keep their outputs and MLMD.

    `root` is a local directory or an object-store URI (`s3://bucket/path`,
    `gs://bucket/path`). `metadata` is the MLMD store: the path of a SQLite
    file, or a `mysql://user@host:port/db` or `postgresql://...` URI (see
    `conveyor.metadata.config`; the password comes from the environment). By
    default `<root>/metadata.sqlite` for a local root; for a remote root
    (where a database cannot live) `<state dir>/conveyor/<name>/metadata.sqlite`,
    the state dir being `$XDG_STATE_HOME` or `~/.local/state`.
    `beam_pipeline_args` apply to every Beam component; a component's own
    args come after them and so win.
    """

    def __init__(
        self,
        name: str,
        root: str,
        components: Sequence[Component],
        *,
        metadata: str | None = None,
        beam_pipeline_args: Sequence[str] | None = None,
        enable_cache: bool = True,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
            raise PipelineDefinitionError(
                f"Pipeline name {name!r} must be non-empty letters, digits, '_', '.', '-'."
            )
        self.name = name
        if not root:
            raise PipelineDefinitionError(f"Pipeline {name!r}: root must be a directory path or an s3:// or gs:// URI.")
        try:
            self.root = fs.abspath(root)
        except ValueError as e:
            raise PipelineDefinitionError(f"Pipeline {name!r}: root {e}") from None
        if metadata:
            from conveyor.metadata.config import check_metadata

            self.metadata = check_metadata(metadata, f"Pipeline {name!r}")
        elif fs.is_remote(self.root):
            self.metadata = default_metadata_path(name)
        else:
            self.metadata = os.path.join(self.root, "metadata.sqlite")
        self.beam_pipeline_args = list(beam_pipeline_args or [])
        self.enable_cache = enable_cache
        for c in components:
            if not isinstance(c, Component):
                raise PipelineDefinitionError(
                    f"Pipeline {name!r}: components must be Component instances, got {c!r}."
                )
        ids: dict[str, Component] = {}
        for c in components:
            if c.id in ids and ids[c.id] is not c:
                raise PipelineDefinitionError(
                    f"Pipeline {name!r} has two components with id {c.id!r}; give one another "
                    f"id with id=... or .with_id(...)."
                )
            ids[c.id] = c
        listed = {id(c) for c in components}
        for c in components:
            for key, channel in c.inputs.items():
                if channel.producer is None:
                    raise PipelineDefinitionError(
                        f"{c._where()} input {key!r} is a {channel!r} that no component produces, so it "
                        f"would be empty at run time. Pass an output of a component in the pipeline, e.g. "
                        f"<component>.outputs[...], or an Importer's or resolver's output."
                    )
                if id(channel.producer) not in listed:
                    raise PipelineDefinitionError(
                        f"{c._where()} input {key!r} comes from {channel.producer.id!r}, "
                        f"which is not in pipeline {name!r}'s components. Add it to the list."
                    )
        self.components = _topological(list(dict.fromkeys(components)))

    def component(self, component_id: str) -> Component:
        for c in self.components:
            if c.id == component_id:
                return c
        raise KeyError(
            f"Pipeline {self.name!r} has no component {component_id!r}."
            f"{closest(component_id, [c.id for c in self.components])}"
        )


def default_metadata_path(pipeline_name: str) -> str:
    """Where the metadata of a pipeline with a remote root lives by default:
    a per-pipeline folder of the user's state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "conveyor", pipeline_name, "metadata.sqlite")


def _topological(components: list[Component]) -> list[Component]:
    """Components in dependency order (stable for independent ones); raises on a cycle."""
    order: list[Component] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(c: Component, path: list[Component]) -> None:
        mark = state.get(id(c))
        if mark == 2:
            return
        if mark == 1:
            cycle = path[path.index(c):] + [c]
            raise PipelineDefinitionError(
                "Pipeline has a cycle: " + " -> ".join(x.id for x in cycle)
                + ". A component cannot depend on its own outputs."
            )
        state[id(c)] = 1
        for up in c.upstream():
            visit(up, path + [c])
        state[id(c)] = 2
        order.append(c)

    for c in components:
        visit(c, [])
    return order
