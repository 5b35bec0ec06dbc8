"""ML Metadata recording, laid out as TFX (1.16) lays it out so TFX's tools
and users' queries work on a Conveyor store.

- Context types `pipeline`, `pipeline_run` (child of its `pipeline`), `node`
  (named `<pipeline>.<node>`).
- Artifact and execution types with TFX's base types; one execution type per
  component type, and TFX's resolver type for every resolver.
- Executions RUNNING → COMPLETE / CACHED / FAILED / CANCELED, parameters as
  custom properties under their own names; a failure's message also as TFX's
  `__execution_result__`.
- INPUT / OUTPUT events whose path is `[<key>, <index>]` (an artifact under
  several keys: one event, one `[key, index]` pair per key, as TFX does); a
  resolver's outputs are INTERNAL_OUTPUT: it chose them, it did not make them.
- An output artifact is put into MLMD, LIVE, only when its executor succeeded,
  with `tfx_version` (the layout its files follow) and `conveyor_version`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.artifacts import TFX_PAYLOAD_VERSION, Artifact, artifact_type
from conveyor.errors import ConveyorError

__all__ = ["Metadata", "RESOLVER_TYPE_NAME", "EXECUTION_BASE_TYPES", "event_paths"]

# Execution custom properties Conveyor itself writes.
CACHE_KEY = "__cache_key__"
CACHE_KEY_PARTS = "__cache_key_parts__"
ERROR = "__error__"
COMPONENT_ID = "__component_id__"
# What ran, so `conveyor replay` can run it again: "module:QualName" of the
# component class, its executor, and the file defining the class (for a
# class whose module cannot be imported by name, as in a pipeline file).
COMPONENT_CLASS = "__component_class__"
EXECUTOR = "__executor__"
CODE_FILE = "__code_file__"
RERUN_REASON = "__rerun_reason__"
# See Metadata._set: how a backslash is stored in a PostgreSQL store.
BACKSLASH_STAND_IN = "\u29f5"
# JSON {"host", "pid", "start"}: the process that runs the execution, so a
# later run can tell an execution whose process died from a running one.
OWNER = "__owner__"
# Epoch seconds: when the owner of a RUNNING execution last said it still runs
# it (conveyor.pipeline.driver.Heartbeat), so a run on another host, which
# cannot look for the owner's process, can tell a crashed machine's execution.
HEARTBEAT = "__heartbeat__"
ATTEMPTS = "__attempts__"
RETRIED_ERRORS = "__retried_errors__"
# The execution's log file (conveyor.pipeline.console), set when it starts.
LOG_PATH = "__log_path__"
# TFX's name for a failure: JSON of an ExecutionResult {"code", "resultMessage"}.
EXECUTION_RESULT = "__execution_result__"
# google.rpc codes TFX records for a failed / a stopped execution.
_RESULT_CODES = {"FAILED": 2, "CANCELED": 1}
# Artifact custom properties the publisher adds to each new artifact.
TFX_VERSION = "tfx_version"
CONVEYOR_VERSION = "conveyor_version"

# The execution type TFX 1.16 records every resolver node under.
RESOLVER_TYPE_NAME = "tfx.dsl.components.common.resolver.Resolver"
# TFX 1.16's base types of the execution types of the components Conveyor
# reimplements (read from a store TFX wrote; its ExampleGen and
# ExampleValidator have none), so generic MLMD readers classify ours alike.
EXECUTION_BASE_TYPES = {
    "conveyor.components.statistics_gen.StatisticsGen": "PROCESS",
    "conveyor.components.schema_gen.SchemaGen": "PROCESS",
    "conveyor.components.transform.Transform": "TRANSFORM",
    "conveyor.components.trainer.Trainer": "TRAIN",
    "conveyor.components.evaluator.Evaluator": "EVALUATE",
    "conveyor.components.pusher.Pusher": "DEPLOY",
}


def _pb() -> Any:
    from ml_metadata.proto import metadata_store_pb2

    return metadata_store_pb2


class Metadata:
    """A connection to an MLMD store (a SQLite file by default).

    All calls are serialized with a lock: the orchestrator's worker threads
    never call MLMD, but user code such as a CLI in another thread may.
    """

    def __init__(self, path: str | None = None, *, connection_config: Any = None) -> None:
        from ml_metadata.metadata_store import metadata_store

        from conveyor.metadata import config

        if connection_config is None:
            if not path:
                raise ValueError("Metadata needs a SQLite path, a database URI or a connection_config")
            connection_config = config.connection_config(config.check_metadata(path, "Metadata"))
        self.path = path
        # Processes connecting to a new store at once (pipelines started
        # together) race to create its tables; MLMD aborts the losers
        # ("Concurrent writes aborted", "a subset of tables ... retry the
        # connection") without retrying as it does other calls: retry here.
        # Other calls MLMD retries when aborted, 5 times by default: too few
        # for several runs writing one SQLite file at once.
        if not connection_config.HasField("retry_options"):
            connection_config = _pb().ConnectionConfig.FromString(connection_config.SerializeToString())
            connection_config.retry_options.max_num_retries = 15
        for attempt in range(12):
            try:
                self.store = metadata_store.MetadataStore(connection_config)
                break
            except RuntimeError as e:
                if attempt == 11 or not ("Concurrent writes aborted" in str(e) or "subset of tables" in str(e)):
                    raise
                import random
                import time

                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        # MLMD 1.16's PostgreSQL source quotes PQescapeLiteral's output again,
        # so a string holding a backslash (E'...') breaks its SQL: there, a
        # backslash is stored as BACKSLASH_STAND_IN and turned back on reading.
        self._pg = connection_config.HasField("postgresql")
        self._lock = threading.RLock()
        self._type_ids: dict[tuple[str, str], int] = {}

    # -- values ------------------------------------------------------------------
    def _set(self, target: Any, v: Any) -> None:
        _set_value(target, v)
        if self._pg and target.WhichOneof("value") == "string_value" and "\\" in target.string_value:
            target.string_value = target.string_value.replace("\\", BACKSLASH_STAND_IN)

    def _get(self, value: Any) -> Any:
        got = _get_value(value)
        return self.text(got) if isinstance(got, str) else got

    def properties_of(self, execution: Any) -> dict[str, Any]:
        """An execution's custom properties as Python values."""
        return {k: self._get(v) for k, v in execution.custom_properties.items()}

    def text(self, value: Any) -> str:
        """A string property as written (a proto Value or its string_value)."""
        raw = value if isinstance(value, str) else value.string_value
        return raw.replace(BACKSLASH_STAND_IN, "\\") if self._pg else raw

    # -- types and contexts ----------------------------------------------------
    def artifact_type_id(self, cls: type[Artifact]) -> int:
        key = ("artifact", cls.TYPE_NAME)
        if key not in self._type_ids:
            pb = _pb()
            t = pb.ArtifactType(name=cls.TYPE_NAME)
            if cls.BASE_TYPE:
                t.base_type = getattr(pb.ArtifactType, cls.BASE_TYPE)
            for name, kind in cls.PROPERTIES.items():
                t.properties[name] = _kind(kind)
            self._type_ids[key] = self._put_type(self.store.put_artifact_type, t, "artifact")
        return self._type_ids[key]

    def execution_type_id(self, type_name: str) -> int:
        key = ("execution", type_name)
        if key not in self._type_ids:
            pb = _pb()
            t = pb.ExecutionType(name=type_name)
            if type_name in EXECUTION_BASE_TYPES:
                t.base_type = getattr(pb.ExecutionType, EXECUTION_BASE_TYPES[type_name])
            self._type_ids[key] = self._put_type(self.store.put_execution_type, t, "execution")
        return self._type_ids[key]

    def context_type_id(self, type_name: str) -> int:
        key = ("context", type_name)
        if key not in self._type_ids:
            pb = _pb()
            t = pb.ContextType(name=type_name)
            if type_name in ("pipeline_run", "node"):
                t.properties["pipeline_name"] = pb.STRING
            self._type_ids[key] = self._put_type(self.store.put_context_type, t, "context")
        return self._type_ids[key]

    def _put_type(self, put: Any, t: Any, kind: str) -> int:
        """Register a type. A stored type with more properties is used as it is
        (as TFX does: a store of an older Conveyor, or of TFX, keeps working);
        one that contradicts ours cannot be, and MLMD cannot change it."""
        from ml_metadata import errors

        with self._lock:
            try:
                return put(t, can_add_fields=True, can_omit_fields=True)
            except (errors.AlreadyExistsError, errors.UnimplementedError, errors.InvalidArgumentError) as e:
                raise ConveyorError(
                    f"The metadata store {self.path or '(connection config)'} records the {kind} type "
                    f"{t.name!r} differently from this Conveyor version ({_describe(t)}); it was probably "
                    f"written by an older Conveyor version. Stores are not migrated: use a fresh metadata "
                    f"store (a new metadata path or database). MLMD said: {str(e).splitlines()[0]}"
                ) from e

    def context(self, type_name: str, name: str, pipeline_name: str | None = None) -> Any:
        """The context of that type and name, created if it does not exist."""
        from ml_metadata import errors

        pb = _pb()
        with self._lock:
            found = self.store.get_context_by_type_and_name(type_name, name)
            if found is not None:
                return found
            ctx = pb.Context(type_id=self.context_type_id(type_name), name=name)
            if pipeline_name is not None:
                ctx.properties["pipeline_name"].string_value = pipeline_name
            try:
                [ctx.id] = self.store.put_contexts([ctx])
            except errors.AlreadyExistsError:
                # Another process (a concurrent run) created it meanwhile.
                return self.store.get_context_by_type_and_name(type_name, name)
            parent = (
                self.store.get_context_by_type_and_name("pipeline", pipeline_name)
                if type_name == "pipeline_run" and pipeline_name else None
            )
            if parent is not None:
                # As TFX links them: a reader finds a pipeline's runs without our pipeline_name.
                self.store.put_parent_contexts([pb.ParentContext(child_id=ctx.id, parent_id=parent.id)])
            return ctx

    def find_context(self, type_name: str, name: str) -> Any:
        with self._lock:
            return self.store.get_context_by_type_and_name(type_name, name)

    # -- artifacts ---------------------------------------------------------------
    def to_proto(self, artifact: Artifact, state: str = "LIVE") -> Any:
        pb = _pb()
        a = pb.Artifact(type_id=self.artifact_type_id(type(artifact)), uri=artifact.uri)
        if artifact.id is not None:
            a.id = artifact.id
        a.state = getattr(pb.Artifact, state)
        for k, v in artifact.properties.items():
            self._set(a.properties[k], v)
        for k, v in artifact.custom_properties.items():
            if v is not None:
                self._set(a.custom_properties[k], v)
        return a

    def from_proto(self, proto: Any, type_name: str | None = None) -> Artifact:
        if type_name is None:
            with self._lock:
                [t] = self.store.get_artifact_types_by_id([proto.type_id])
            type_name = t.name
        art = artifact_type(type_name)(proto.uri, id=proto.id)
        for k, v in proto.properties.items():
            art.properties[k] = self._get(v)
        for k, v in proto.custom_properties.items():
            art.custom_properties[k] = self._get(v)
        return art

    def artifacts_by_id(self, ids: Sequence[int]) -> list[Artifact]:
        with self._lock:
            protos = self.store.get_artifacts_by_id(list(ids))
        by_id = {p.id: p for p in protos}
        return [self.from_proto(by_id[i]) for i in ids if i in by_id]

    def artifacts_of_type(self, cls: type[Artifact], context_id: int | None = None) -> list[Artifact]:
        with self._lock:
            if context_id is None:
                protos = self.store.get_artifacts_by_type(cls.TYPE_NAME)
            else:
                type_id = self.artifact_type_id(cls)
                protos = [p for p in self.store.get_artifacts_by_context(context_id) if p.type_id == type_id]
        pb = _pb()
        return [self.from_proto(p, cls.TYPE_NAME) for p in protos if p.state == pb.Artifact.LIVE]

    # -- executions ----------------------------------------------------------------
    def start_execution(
        self,
        component_type: str,
        contexts: Sequence[Any],
        inputs: dict[str, list[Artifact]],
        properties: dict[str, Any],
    ) -> int:
        """Record a RUNNING execution with its INPUT events; returns its id."""
        pb = _pb()
        e = pb.Execution(type_id=self.execution_type_id(component_type), last_known_state=pb.Execution.RUNNING)
        for k, v in properties.items():
            if v is not None:
                self._set(e.custom_properties[k], v)
        groups = self._events(inputs, pb.Event.INPUT)
        with self._lock:
            execution_id, _, _ = self.store.put_execution(
                e, [(proto, ev) for proto, ev, _ in groups], list(contexts), reuse_context_if_already_exist=True
            )
        return execution_id

    def _events(self, artifacts: dict[str, list[Artifact]], kind: int) -> list[tuple[Any, Any, list[Artifact]]]:
        """(artifact proto, event, the artifacts it stands for) per distinct
        artifact: MLMD holds one event per artifact and kind, so an artifact
        under several keys gets one `[key, index]` pair per key, as in TFX."""
        groups: dict[int, tuple[Any, Any, list[Artifact]]] = {}
        for key, i, a in _flatten(artifacts):
            same = a.id if a.id is not None else -id(a)
            if same in groups:
                _add_path(groups[same][1], key, i)
                groups[same][2].append(a)
            else:
                groups[same] = (self.to_proto(a), _event(kind, key, i), [a])
        return list(groups.values())

    def finish_execution(
        self,
        execution_id: int,
        contexts: Sequence[Any],
        outputs: dict[str, list[Artifact]],
        state: str = "COMPLETE",
        properties: dict[str, Any] | None = None,
        only_if_running: bool = False,
    ) -> None:
        """Publish outputs (LIVE, with OUTPUT events; INTERNAL_OUTPUT for a
        resolver) and set the final state. Artifacts that already have an id
        (a cache hit, a resolver's choice) are linked, not copied; new ones get
        `tfx_version` and `conveyor_version`. An ERROR property is also
        recorded as TFX's EXECUTION_RESULT. `only_if_running`: raise
        ExecutionTakenOverError, writing nothing, when the execution is no
        longer RUNNING (another run ended it meanwhile)."""
        pb = _pb()
        properties = dict(properties or {})
        if properties.get(ERROR) is not None:
            properties[EXECUTION_RESULT] = json.dumps(
                {"code": _RESULT_CODES.get(state, 2), "resultMessage": properties[ERROR]}
            )
        for arts in outputs.values():
            for art in arts:
                if art.id is None:
                    art.custom_properties.setdefault(TFX_VERSION, TFX_PAYLOAD_VERSION)
                    art.custom_properties.setdefault(CONVEYOR_VERSION, _conveyor_version())
        with self._lock:
            [e] = self.store.get_executions_by_id([execution_id])
            if only_if_running and e.last_known_state != pb.Execution.RUNNING:
                from conveyor.errors import ExecutionTakenOverError

                recorded = e.custom_properties.get(ERROR)
                why = f": {recorded.string_value}" if recorded is not None and recorded.string_value else ""
                raise ExecutionTakenOverError(
                    f"execution {execution_id} is {pb.Execution.State.Name(e.last_known_state)} in the store, set "
                    f"by another run while it ran{why}. Its outputs were discarded, not published; run again "
                    f"(a longer stale_after keeps a slow host's executions)."
                )
            e.last_known_state = getattr(pb.Execution, state)
            for k, v in properties.items():
                if v is not None:
                    self._set(e.custom_properties[k], v)
            internal = bool(outputs) and self.execution_type_name(e) == RESOLVER_TYPE_NAME
            groups = self._events(outputs, pb.Event.INTERNAL_OUTPUT if internal else pb.Event.OUTPUT)
            _, artifact_ids, _ = self.store.put_execution(
                e, [(proto, ev) for proto, ev, _ in groups], list(contexts), reuse_context_if_already_exist=True
            )
        for (_, _, arts), new_id in zip(groups, artifact_ids, strict=True):
            for art in arts:
                art.id = new_id

    def set_execution_properties(self, execution_id: int, properties: dict[str, Any]) -> None:
        """Add custom properties to an execution, leaving its state."""
        with self._lock:
            [e] = self.store.get_executions_by_id([execution_id])
            for k, v in properties.items():
                self._set(e.custom_properties[k], v)
            self.store.put_executions([e])

    def heartbeat(self, execution_ids: Sequence[int], when: float) -> list[int]:
        """Set HEARTBEAT to `when` on those of the executions still RUNNING;
        their ids. Only that property is written (a masked update), so a
        state another process set meanwhile is never put back."""
        pb = _pb()
        with self._lock:
            running = [e for e in self.store.get_executions_by_id(list(execution_ids))
                       if e.last_known_state == pb.Execution.RUNNING]
            updates = []
            for e in running:
                update = pb.Execution(id=e.id, type_id=e.type_id)
                update.custom_properties[HEARTBEAT].double_value = when
                updates.append(update)
            if updates:
                self.store.put_executions(updates, field_mask_paths=[f"custom_properties.{HEARTBEAT}"])
        return [e.id for e in running]

    def fail_execution(self, execution_id: int, contexts: Sequence[Any], error: str) -> None:
        self.finish_execution(execution_id, contexts, {}, state="FAILED", properties={ERROR: error})

    def executions(self, context_id: int) -> list[Any]:
        with self._lock:
            return list(self.store.get_executions_by_context(context_id))

    def contexts_of(self, execution_id: int) -> list[Any]:
        with self._lock:
            return list(self.store.get_contexts_by_execution(execution_id))

    def execution(self, execution_id: int) -> Any:
        with self._lock:
            [e] = self.store.get_executions_by_id([execution_id])
        return e

    def io_of(self, execution_id: int, kind: str = "OUTPUT") -> dict[str, list[Artifact]]:
        """The input or output artifacts of an execution, by key, in order."""
        pb = _pb()
        want = getattr(pb.Event, kind)
        with self._lock:
            events = [ev for ev in self.store.get_events_by_execution_ids([execution_id]) if ev.type == want]
        artifacts = {a.id: a for a in self.artifacts_by_id([ev.artifact_id for ev in events])}
        result: dict[str, list[tuple[int, Artifact]]] = {}
        for ev in events:
            if ev.artifact_id in artifacts:
                for key, index in event_paths(ev):
                    result.setdefault(key, []).append((index, artifacts[ev.artifact_id]))
        return {k: [a for _, a in sorted(v, key=lambda p: p[0])] for k, v in result.items()}

    def producer_of(self, artifact_id: int) -> int | None:
        """The id of the execution that first output this artifact (OUTPUT
        events only: a resolver that passed it on is not its producer)."""
        pb = _pb()
        with self._lock:
            events = self.store.get_events_by_artifact_ids([artifact_id])
        outs = sorted(ev.execution_id for ev in events if ev.type == pb.Event.OUTPUT)
        return outs[0] if outs else None

    def execution_type_name(self, execution: Any) -> str:
        with self._lock:
            [t] = self.store.get_execution_types_by_id([execution.type_id])
        return t.name


_PROPERTY_KIND_NAMES = {int: "INT", str: "STRING", float: "DOUBLE"}


def _kind(py_type: type) -> int:
    return getattr(_pb(), _PROPERTY_KIND_NAMES[py_type])


def _set_value(value: Any, v: Any) -> None:
    if isinstance(v, bool):
        value.int_value = int(v)
    elif isinstance(v, int):
        value.int_value = v
    elif isinstance(v, float):
        value.double_value = v
    elif isinstance(v, str):
        value.string_value = v
    else:
        value.string_value = json.dumps(v, sort_keys=True)


def _get_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _event(kind: int, key: str, index: int) -> Any:
    ev = _pb().Event(type=kind)
    _add_path(ev, key, index)
    return ev


def _add_path(ev: Any, key: str, index: int) -> None:
    ev.path.steps.add().key = key
    ev.path.steps.add().index = index


def event_paths(ev: Any) -> list[tuple[str, int]]:
    """An event's (key, index) pairs: `[key, index]`, or `[k1, i1, k2, i2, ...]`
    for an artifact under several keys of one execution (as TFX writes it)."""
    steps = list(ev.path.steps)
    pairs = []
    for j in range(0, len(steps), 2):
        key = steps[j].key if steps[j].HasField("key") else ""
        index = steps[j + 1].index if j + 1 < len(steps) and steps[j + 1].HasField("index") else 0
        pairs.append((key, index))
    return pairs


def _describe(t: Any) -> str:
    """A type as registered: its base type and properties."""
    pb = _pb()
    names = {v: k for k, v in pb.PropertyType.items()}
    has_base = "base_type" in t.DESCRIPTOR.fields_by_name and t.HasField("base_type")
    base = type(t).SystemDefinedBaseType.Name(t.base_type) if has_base else "none"
    props = ", ".join(f"{k}: {names[v]}" for k, v in sorted(t.properties.items())) or "none"
    return f"base type {base}, properties {props}"


def _conveyor_version() -> str:
    from conveyor import __version__

    return __version__


def _flatten(artifacts: dict[str, list[Artifact]]) -> Iterable[tuple[str, int, Artifact]]:
    for key, items in artifacts.items():
        for i, a in enumerate(items):
            yield key, i, a
