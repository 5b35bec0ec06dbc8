"""Lineage you can ask questions of: runs, provenance, consumers, what is
served, what changed between two runs and why a node came (or not) from the
cache, on a store written by Conveyor or by TFX alike.

    from conveyor import lineage

    store = lineage.open_store("root/metadata.sqlite")   # or mysql://..., postgresql://..., a folder
    for r in lineage.runs(store, last=5):
        print(r.run_id, r.state, r.seconds)
    served = lineage.served_model(store)                  # the latest pushed model
    graph = lineage.provenance(store, served.id)          # upstream, to the source files
    print(lineage.format_provenance(graph))
    print(lineage.format_diff(lineage.diff(store, "previous", "latest")))
    print(lineage.format_why(lineage.why(store, "latest", "trainer")))

How a store is read (both dialects lay MLMD out the same way, TFX's way):

- A run is a `pipeline_run` context; its id is the context's name. Its
  pipeline is the context's `pipeline_name` property (Conveyor) or its parent
  `pipeline` context (TFX).
- A node's executions share a `node` context named `<pipeline>.<node>`;
  Conveyor also records the node id as the `__component_id__` execution
  property.
- Parameters are execution custom properties under their own names (names
  starting with `__` are Conveyor's own bookkeeping). Conveyor records the
  parts of its cache key (`__cache_key_parts__`: component, input artifact
  ids, parameters, user-code and data fingerprints); for TFX they are rebuilt
  from what it records (type, INPUT events, parameters, the user-code hash in
  `module_path`'s wheel name, `input_fingerprint`).
- An artifact's producer is the first execution with an OUTPUT event for it
  (a cached execution re-links outputs it did not make; a resolver's
  INTERNAL_OUTPUT counts only when there is no OUTPUT at all).
- Every field is read from the properties or the custom properties alike
  (TFX keeps `blessed`, `pushed`, ... as custom properties).

Files of a copied store: artifact URIs are those recorded when the pipeline
ran. When a URI does not exist here and the store is a SQLite file, its files
are looked for under the store's folder, first in a `root/` sub-folder, then
in the folder itself, by the URI's last parts (`<node>/<key>/<execution>`):
copy the store with its pipeline root next to it as `root/` (or keep the
store inside its root, as Conveyor writes it) and the files are found. An
artifact whose files are nowhere is still shown, from its metadata, as
"files gone".

Run shortcuts (wherever a run id is taken): `latest`, `previous` (the run
before it), `latest~N` (N runs before the latest), or a unique prefix of a
run id. With `pipeline=...` they count that pipeline's runs only.

Queries use MLMD's filter queries, per-context and batched event look-ups,
so their cost follows the size of what is asked, not of the store (see
bench/lineage.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from conveyor.errors import ConveyorError

__all__ = [
    "LineageNotFoundError",
    "Store",
    "NodeRun",
    "Run",
    "ArtifactInfo",
    "ExecutionInfo",
    "Provenance",
    "NodeDiff",
    "RunDiff",
    "CacheExplanation",
    "LogRecord",
    "open_store",
    "runs",
    "run",
    "resolve_run",
    "artifact",
    "artifacts",
    "execution",
    "producer",
    "provenance",
    "consumers",
    "served_model",
    "diff",
    "why",
    "logs",
    "to_json",
    "format_runs",
    "format_run",
    "format_artifact",
    "format_artifact_line",
    "format_provenance",
    "provenance_dot",
    "format_diff",
    "format_why",
    "LOG_PROPERTIES",
]

# Conveyor's own execution properties (conveyor.metadata.store), kept as
# strings so this module reads a store without importing the recorder.
_COMPONENT_ID = "__component_id__"
_CACHE_KEY = "__cache_key__"
_CACHE_KEY_PARTS = "__cache_key_parts__"
_ERROR = "__error__"
_RERUN_REASON = "__rerun_reason__"
_BACKSLASH_STAND_IN = "\u29f5"
# TFX's execution result (a JSON ExecutionResult) on a failed execution.
_TFX_RESULT = "__execution_result__"
# Where an execution's log may be recorded, first found wins.
LOG_PROPERTIES = ("__log_path__", "__log__", "__log_uri__", "log_path", "log_uri")
# Parameters that are data fingerprints rather than settings.
_FINGERPRINT_PROPERTIES = ("input_fingerprint",)
# TFX's packaged user code: `module@.../tfx_user_code_<Node>-0.0+<sha256>-py3-none-any.whl`.
_TFX_WHEEL = re.compile(r"^(?P<module>[^@]*)@.*tfx_user_code_[^/]*?\+(?P<hash>[0-9a-f]{16,})-")
_RUN_SHORTCUT = re.compile(r"^(latest|previous)(?:~(\d+))?$")
_STATES = ("UNKNOWN", "NEW", "RUNNING", "COMPLETE", "FAILED", "CACHED", "CANCELED")
_ARTIFACT_STATES = ("UNKNOWN", "PENDING", "LIVE", "MARKED_FOR_DELETION", "DELETED", "ABANDONED", "REFERENCE")
_IN_CHUNK = 500


class LineageNotFoundError(ConveyorError, LookupError):
    """A store, run, node, artifact or log that is not there; the message
    says what was looked for and how to find what is."""


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class NodeRun:
    """One node's execution in a run."""

    node: str
    execution_id: int
    state: str  # COMPLETE, CACHED, FAILED, RUNNING, CANCELED, ...
    type: str
    started: float  # seconds since the epoch
    seconds: float
    rerun_reason: str | None = None  # as Conveyor recorded it
    error: str | None = None
    inputs: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # artifact ids by key
    outputs: dict[str, list[int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
    """A pipeline run: its overall state (FAILED if a node failed, RUNNING if
    one still runs, else COMPLETE), start, duration and nodes in order."""

    run_id: str
    pipeline: str
    state: str
    started: float
    seconds: float
    nodes: list[NodeRun]
    context_id: int

    def node(self, node_id: str) -> NodeRun:
        for n in reversed(self.nodes):
            if n.node == node_id:
                return n
        raise LineageNotFoundError(
            f"run {self.run_id} has no execution of node {node_id!r}; its nodes are "
            f"{', '.join(n.node for n in self.nodes) or 'none'}."
        )


@dataclasses.dataclass
class ArtifactInfo:
    """An artifact as recorded, and where its files are now."""

    id: int
    type: str
    uri: str
    state: str
    created: float
    properties: dict[str, Any]  # properties and custom properties, one namespace
    local_path: str | None  # where its files are (the URI, or under a copied store's folder)
    files: Literal["present", "gone", "unknown"]  # unknown: a remote URI, not checked


@dataclasses.dataclass
class ExecutionInfo:
    """An execution: which node of which run, its parameters, user-code and
    data fingerprints, cache key and inputs / outputs (artifact ids by key)."""

    id: int
    node: str
    type: str
    state: str
    run_id: str | None
    pipeline: str | None
    started: float
    seconds: float
    parameters: dict[str, Any]
    code: dict[str, str]  # user-code file (or module) -> content hash
    fingerprints: dict[str, str]  # external data -> fingerprint
    cache_key: str | None
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    error: str | None = None


@dataclasses.dataclass
class Provenance:
    """The graph around an artifact: upstream (what it was made from, down
    to the source files) or downstream (what was made from it). Edges are
    the executions' `inputs` and `outputs` restricted to `artifacts`."""

    root: int
    direction: Literal["up", "down"]
    artifacts: dict[int, ArtifactInfo]
    executions: dict[int, ExecutionInfo]

    def edges(self) -> list[tuple[str, str, str]]:
        """(from, to, key) with nodes named `a<id>` / `e<id>`."""
        found = []
        for e in self.executions.values():
            for key, ids in e.inputs.items():
                found += [(f"a{a}", f"e{e.id}", key) for a in ids if a in self.artifacts]
            for key, ids in e.outputs.items():
                found += [(f"e{e.id}", f"a{a}", key) for a in ids if a in self.artifacts]
        return found

    def sources(self) -> list[ExecutionInfo]:
        """The executions with no input artifact (ExampleGens, importers)."""
        return [e for e in self.executions.values() if not any(e.inputs.values())]


@dataclasses.dataclass
class NodeDiff:
    """One node across two runs. `changes` are what differs between the
    two executions' cache keys, in words (why it re-ran in the second)."""

    node: str
    state_a: str | None  # None: no execution of the node in that run
    state_b: str | None
    execution_a: int | None
    execution_b: int | None
    reran: bool
    changes: list[str]
    parameters: dict[str, tuple[Any, Any]]
    code: dict[str, tuple[str | None, str | None]]
    fingerprints: dict[str, tuple[str | None, str | None]]
    outputs_same: bool
    resolver: bool = False  # resolvers run every time: they pick artifacts, they are not cached


@dataclasses.dataclass
class RunDiff:
    """Run b against run a: each node, and for outputs that differ the
    schema changes and the metric changes (overall slice)."""

    run_a: str
    run_b: str
    nodes: list[NodeDiff]
    schema: dict[str, list[str]]  # "<node>.<key>" -> changes, for schemas both of whose files are here
    metrics: dict[str, dict[str, tuple[float | None, float | None]]]  # "<node>.<key>" -> metric -> (a, b)
    notes: list[str]  # what could not be compared, and why (files gone)

    def node(self, node_id: str) -> NodeDiff:
        for n in self.nodes:
            if n.node == node_id:
                return n
        raise LineageNotFoundError(f"neither run has node {node_id!r}")


@dataclasses.dataclass
class CacheExplanation:
    """Why a node of a run did or did not come from the cache."""

    run_id: str
    node: str
    execution_id: int
    state: str
    cached: bool
    reasons: list[str]  # in words, most important first
    changes: list[str]  # the cache-key parts that changed since `previous_execution`
    previous_execution: int | None  # the execution compared with (or reused, when cached)
    previous_run: str | None
    cache_key: str | None
    recorded_reason: str | None = None


@dataclasses.dataclass
class LogRecord:
    """Where an execution's log is, if one was recorded."""

    run_id: str
    node: str
    execution_id: int
    path: str | None  # as recorded
    local_path: str | None  # readable here (None: not recorded or gone)
    message: str


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


class Store:
    """A read connection to an MLMD store, with the look-ups queries share
    (type names, contexts) cached. Make one with `open_store`."""

    def __init__(self, mlmd: Any, description: str, folder: str | None, postgres: bool = False) -> None:
        self.mlmd = mlmd
        self.description = description
        self.folder = folder  # the SQLite file's folder: where copied artifact files are looked for
        self._postgres = postgres
        self._execution_types: dict[int, str] | None = None
        self._artifact_types: dict[int, str] | None = None
        self._context_types: dict[int, str] | None = None
        self._run_contexts: dict[int, Any] = {}
        self._pipeline_of_run: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"Store({self.description!r})"

    # -- types -----------------------------------------------------------------
    def execution_type(self, type_id: int) -> str:
        if self._execution_types is None or type_id not in self._execution_types:
            self._execution_types = {t.id: t.name for t in self.mlmd.get_execution_types()}
        return self._execution_types.get(type_id, f"type #{type_id}")

    def artifact_type(self, type_id: int) -> str:
        if self._artifact_types is None or type_id not in self._artifact_types:
            self._artifact_types = {t.id: t.name for t in self.mlmd.get_artifact_types()}
        return self._artifact_types.get(type_id, f"type #{type_id}")

    def context_type(self, type_id: int) -> str:
        if self._context_types is None or type_id not in self._context_types:
            self._context_types = {t.id: t.name for t in self.mlmd.get_context_types()}
        return self._context_types.get(type_id, f"type #{type_id}")

    # -- values ------------------------------------------------------------------
    def value(self, proto: Any, name: str, default: Any = None) -> Any:
        """A property or custom property of an artifact, execution or
        context, whichever holds it, as a Python value."""
        for field in (proto.properties, proto.custom_properties):
            if name in field:
                return self.python_value(field[name])
        return default

    def values(self, proto: Any) -> dict[str, Any]:
        found = {k: self.python_value(v) for k, v in proto.custom_properties.items()}
        found.update({k: self.python_value(v) for k, v in proto.properties.items()})
        return found

    def python_value(self, v: Any) -> Any:
        """An MLMD Value as a Python value (int, float, str, JSON struct, ...)."""
        which = v.WhichOneof("value")
        if which is None:
            return None
        if which == "struct_value":
            from google.protobuf import json_format

            return json_format.MessageToDict(v.struct_value)
        if which == "proto_value":
            return f"<{v.proto_value.type_url.rsplit('/', 1)[-1]}>"
        got = getattr(v, which)
        if which == "string_value" and self._postgres:
            # conveyor.metadata.store keeps backslashes as a stand-in in PostgreSQL.
            return got.replace(_BACKSLASH_STAND_IN, "\\")
        if which == "bool_value":
            return bool(got)
        return got

    # -- files -------------------------------------------------------------------
    def locate(self, uri: str) -> tuple[str | None, Literal["present", "gone", "unknown"]]:
        """Where a recorded URI's files are here: the URI itself, or the same
        last parts under the store's `root/` folder or its own folder."""
        from conveyor import fs

        if fs.is_remote(uri):
            return uri, "unknown"  # not checked: one request per artifact would make every query slow
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        if os.path.exists(path):
            return path, "present"
        if self.folder:
            parts = [p for p in path.split("/") if p]
            for base in (os.path.join(self.folder, "root"), self.folder):
                if not os.path.isdir(base):
                    continue
                # The longest tail that exists: `<node>/<key>/<execution id>` for both dialects.
                for k in range(len(parts) - 1, 1, -1):
                    candidate = os.path.join(base, *parts[-k:])
                    if os.path.exists(candidate):
                        return candidate, "present"
        return None, "gone"

    def recorded_uri_candidates(self, path: str) -> list[str]:
        """Tails of a local path under the store's folder, to find the
        recorded URI of a copied artifact (`<store>/root/<node>/<key>/<id>`)."""
        if not self.folder:
            return []
        path = os.path.abspath(path)
        found = []
        for base in (os.path.join(self.folder, "root"), self.folder):
            if path.startswith(base + os.sep):
                found.append(path[len(base):])
        return found

    # -- contexts ------------------------------------------------------------------
    def run_context(self, context_id: int) -> Any:
        if context_id not in self._run_contexts:
            [self._run_contexts[context_id]] = self.mlmd.get_contexts_by_id([context_id])
        return self._run_contexts[context_id]

    def pipeline_of_run(self, ctx: Any) -> str:
        """A run's pipeline: its `pipeline_name` property (Conveyor) or its
        parent `pipeline` context (TFX)."""
        if ctx.id not in self._pipeline_of_run:
            name = self.value(ctx, "pipeline_name")
            if not name:
                parents = [p for p in self.mlmd.get_parent_contexts_by_context(ctx.id)
                           if self.context_type(p.type_id) == "pipeline"]
                name = parents[0].name if parents else ""
            if not name:
                pipelines = [c for c in self.mlmd.get_contexts(list_options=_options(
                    f"type = 'pipeline' AND executions_0.id IN ({_first_execution(self, ctx.id)})"))]
                name = pipelines[0].name if pipelines else ""
            self._pipeline_of_run[ctx.id] = name
        return self._pipeline_of_run[ctx.id]


def _first_execution(store: Store, context_id: int) -> int:
    found = store.mlmd.get_executions_by_context(context_id, list_options=_list_options(limit=1))
    return found[0].id if found else -1


def _list_options(filter_query: str = "", *, limit: int | None = None, newest_first: bool = False,
                  by: str = "ID") -> Any:
    from ml_metadata.metadata_store import metadata_store

    kwargs: dict[str, Any] = {
        "order_by": getattr(metadata_store.OrderByField, by),
        "is_asc": not newest_first,
    }
    if limit is not None:
        kwargs["limit"] = limit
    if filter_query:
        kwargs["filter_query"] = filter_query
    return metadata_store.ListOptions(**kwargs)


def _options(filter_query: str, **kw: Any) -> Any:
    return _list_options(filter_query, **kw)


def _q(text: str) -> str:
    """A string literal for an MLMD filter query."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(str(int(i)) for i in ids)


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i:i + _IN_CHUNK]


def open_store(path_or_uri: str | Store) -> Store:
    """A Store for a SQLite file (or the folder holding `metadata.sqlite`), a
    `sqlite://` URI, or a `mysql://` / `postgresql://` URI (password from
    CONVEYOR_METADATA_PASSWORD, as for pipelines). A SQLite store is opened
    read-only and never created: a missing one is a LineageNotFoundError."""
    if isinstance(path_or_uri, Store):
        return path_or_uri
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    from conveyor.metadata import config

    spec = str(path_or_uri)
    if not config.is_database_uri(spec) and os.path.isdir(config.check_metadata(spec, "store")):
        spec = os.path.join(spec, "metadata.sqlite")
    checked = config.check_metadata(spec, "--store")
    folder = None
    if config.is_database_uri(checked):
        connection = config.connection_config(checked)
    else:
        if not os.path.isfile(checked):
            raise LineageNotFoundError(
                f"no metadata store at {checked}: expected an MLMD SQLite file (e.g. <pipeline root>/"
                f"metadata.sqlite), a folder holding metadata.sqlite, or a mysql:// or postgresql:// URI. "
                f"Run the pipeline first, or check the path."
            )
        connection = pb.ConnectionConfig()
        connection.sqlite.filename_uri = checked
        connection.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READONLY
        folder = os.path.dirname(checked)
    try:
        mlmd = metadata_store.MetadataStore(connection)
        mlmd.get_context_types()
    except Exception as e:  # MLMD raises its own error kinds for an unreadable source
        raise LineageNotFoundError(
            f"{config.describe(checked)} cannot be read as an MLMD store ({type(e).__name__}: {e}); "
            f"check that it is the metadata store a pipeline wrote."
        ) from e
    return Store(mlmd, config.describe(checked), folder, postgres=connection.HasField("postgresql"))


# ---------------------------------------------------------------------------
# Executions: reading either dialect
# ---------------------------------------------------------------------------


def _state(e: Any) -> str:
    return _STATES[e.last_known_state] if e.last_known_state < len(_STATES) else str(e.last_known_state)


def _seconds(e: Any) -> float:
    return max(0.0, (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000)


def _is_resolver(type_name: str, node: str) -> bool:
    return "resolver" in type_name.lower() or "resolver" in node.lower()


def _parameters(store: Store, e: Any) -> dict[str, Any]:
    return {k: v for k, v in store.values(e).items()
            if not k.startswith("__") and k not in _FINGERPRINT_PROPERTIES}


def _recorded_parts(store: Store, e: Any) -> dict[str, str] | None:
    raw = store.value(e, _CACHE_KEY_PARTS)
    if not raw:
        return None
    try:
        parts = json.loads(raw)
    except ValueError:
        return None
    return parts if isinstance(parts, dict) else None


def _tfx_code(parameters: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """User-code hashes from TFX's wheel names, and the parameters they came from."""
    code, used = {}, set()
    for name, value in parameters.items():
        m = _TFX_WHEEL.match(value) if isinstance(value, str) else None
        if m:
            code[m.group("module") or name] = m.group("hash")
            used.add(name)
    return code, used


def _canonical(value: Any) -> str:
    """A parameter as key-part text: JSON, with JSON-in-a-string unpacked, so
    TFX's pretty-printed JSON and a compact one compare equal."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return json.dumps(value, sort_keys=True)


def _key_parts(store: Store, e: Any, type_name: str, inputs: dict[str, list[int]]) -> dict[str, str]:
    """The parts of an execution's cache key: as Conveyor recorded them, or
    rebuilt from the record (TFX keeps only the key's hash)."""
    recorded = _recorded_parts(store, e)
    if recorded is not None:
        return recorded
    params = _parameters(store, e)
    code, from_code = _tfx_code(params)
    parts = {"component": type_name}
    for key, ids in sorted(inputs.items()):
        parts[f"input:{key}"] = ",".join(str(i) for i in ids)
    for name, value in sorted(params.items()):
        if name not in from_code:
            parts[f"parameter:{name}"] = _canonical(value)
    for name, digest in code.items():
        parts[f"code:{name}"] = digest
    for name in _FINGERPRINT_PROPERTIES:
        fingerprint = store.value(e, name)
        if fingerprint:
            parts[f"data:{name}"] = str(fingerprint)
    return parts


def _error(store: Store, e: Any) -> str | None:
    error = store.value(e, _ERROR)
    if error:
        return str(error)
    result = store.value(e, _TFX_RESULT)
    if result:
        try:
            data = json.loads(result)
            return str(data.get("resultMessage") or data.get("result_message") or result)
        except ValueError:
            return str(result)
    return None


def _events(store: Store, execution_ids: Sequence[int]) -> dict[int, tuple[dict[str, list[int]], dict[str, list[int]]]]:
    """(inputs, outputs) by key for each execution, from one batched query."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    sides = {pb.Event.INPUT: 0, pb.Event.DECLARED_INPUT: 0, pb.Event.OUTPUT: 1, pb.Event.DECLARED_OUTPUT: 1}
    found: dict[int, tuple[dict[str, list[tuple[int, int]]], ...]] = {i: ({}, {}) for i in execution_ids}
    for chunk in _chunks(list(execution_ids)):
        for ev in store.mlmd.get_events_by_execution_ids(list(chunk)):
            if ev.type not in sides:
                continue  # INTERNAL_*: a resolver's view of artifacts it did not make
            side = found[ev.execution_id][sides[ev.type]]
            # A path is [key, index] pairs; TFX writes two for one artifact on two keys.
            steps = list(ev.path.steps)
            pairs = [(steps[i].key, steps[i + 1].index if i + 1 < len(steps) else 0)
                     for i in range(0, len(steps), 2) if steps[i].HasField("key")] or [("", 0)]
            for key, index in pairs:
                side.setdefault(key, []).append((index, ev.artifact_id))

    def ordered(side: dict[str, list[tuple[int, int]]]) -> dict[str, list[int]]:
        return {k: [a for _, a in sorted(v)] for k, v in side.items()}

    return {i: (ordered(ins), ordered(outs)) for i, (ins, outs) in found.items()}


def _context_of(store: Store, execution_ids: Sequence[int], context_type: str) -> dict[int, Any]:
    """The context of a type each execution belongs to, with one query per
    distinct context (a handful) rather than one per execution."""
    if not execution_ids:
        return {}
    found: dict[int, Any] = {}
    for chunk in _chunks(list(execution_ids)):
        contexts = store.mlmd.get_contexts(list_options=_options(
            f"type = {_q(context_type)} AND executions_0.id IN ({_ids(chunk)})"))
        if len(contexts) == 1:
            found.update({i: contexts[0] for i in chunk})
            continue
        for ctx in contexts:
            members = store.mlmd.get_executions(list_options=_options(
                f"contexts_a.id = {ctx.id} AND id IN ({_ids(chunk)})"))
            found.update({m.id: ctx for m in members})
    return found


def _node_names(store: Store, executions: Sequence[Any], pipeline_of: dict[int, str]) -> dict[int, str]:
    """Each execution's node id: Conveyor's `__component_id__`, else its
    node context's name without the `<pipeline>.` prefix."""
    names = {}
    missing = []
    for e in executions:
        component = store.value(e, _COMPONENT_ID)
        if component:
            names[e.id] = str(component)
        else:
            missing.append(e.id)
    for exec_id, ctx in _context_of(store, missing, "node").items():
        pipeline = pipeline_of.get(exec_id, "")
        if pipeline and ctx.name.startswith(pipeline + "."):
            names[exec_id] = ctx.name[len(pipeline) + 1:]
        else:
            names[exec_id] = ctx.name.split(".", 1)[-1]
    for exec_id in missing:
        names.setdefault(exec_id, f"execution-{exec_id}")
    return names


def _execution_infos(store: Store, executions: Sequence[Any]) -> dict[int, ExecutionInfo]:
    """ExecutionInfo for many executions with a fixed number of batched queries."""
    if not executions:
        return {}
    ids = [e.id for e in executions]
    events = _events(store, ids)
    runs = _context_of(store, ids, "pipeline_run")
    pipelines = {i: store.pipeline_of_run(ctx) for i, ctx in runs.items()}
    nodes = _node_names(store, executions, pipelines)
    infos = {}
    for e in executions:
        type_name = store.execution_type(e.type_id)
        inputs, outputs = events[e.id]
        params = _parameters(store, e)
        parts = _key_parts(store, e, type_name, inputs)
        code = {k.split(":", 1)[1]: v for k, v in parts.items() if k.startswith("code:")}
        fingerprints = {k.split(":", 1)[1]: v for k, v in parts.items() if k.startswith("data:")}
        run_ctx = runs.get(e.id)
        infos[e.id] = ExecutionInfo(
            id=e.id, node=nodes[e.id], type=type_name, state=_state(e),
            run_id=run_ctx.name if run_ctx is not None else None,
            pipeline=pipelines.get(e.id), started=e.create_time_since_epoch / 1000, seconds=_seconds(e),
            parameters=params, code=code, fingerprints=fingerprints,
            cache_key=store.value(e, _CACHE_KEY), inputs=inputs, outputs=outputs, error=_error(store, e),
        )
    return infos


def execution(store: Store | str, execution_id: int) -> ExecutionInfo:
    """One execution, by id."""
    store = open_store(store)
    found = store.mlmd.get_executions_by_id([int(execution_id)])
    if not found:
        raise LineageNotFoundError(f"{store.description} has no execution #{execution_id}.")
    return _execution_infos(store, found)[found[0].id]


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


def _run_contexts(store: Store, pipeline: str | None, *, last: int | None = None,
                  name_filter: str = "") -> list[Any]:
    """pipeline_run contexts, newest first, of one pipeline or all."""
    base = "type = 'pipeline_run'" + (f" AND {name_filter}" if name_filter else "")
    opts = {"limit": last, "newest_first": True, "by": "CREATE_TIME"}
    if pipeline is None:
        return list(store.mlmd.get_contexts(list_options=_options(base, **opts)))
    # Conveyor names the pipeline in a property, TFX in a parent context.
    found = list(store.mlmd.get_contexts(list_options=_options(
        f"{base} AND properties.pipeline_name.string_value = {_q(pipeline)}", **opts)))
    if not found:
        found = list(store.mlmd.get_contexts(list_options=_options(
            f"{base} AND parent_contexts_a.type = 'pipeline' AND parent_contexts_a.name = {_q(pipeline)}", **opts)))
    return found


def resolve_run(store: Store | str, spec: str, pipeline: str | None = None) -> Any:
    """The pipeline_run context a run id or shortcut names (see the module
    docstring): `latest`, `previous`, `latest~N`, an exact id or a unique prefix."""
    store = open_store(store)
    spec = spec.strip()
    m = _RUN_SHORTCUT.match(spec)
    if m:
        back = (1 if m.group(1) == "previous" else 0) + int(m.group(2) or 0)
        found = _run_contexts(store, pipeline, last=back + 1)
        if len(found) <= back:
            where = f" of pipeline {pipeline!r}" if pipeline else ""
            raise LineageNotFoundError(
                f"{spec!r}: {store.description} has {len(found)} run(s){where}, so there is no run "
                f"{back} before the latest; list them with `conveyor runs`."
            )
        return found[back]
    exact = store.mlmd.get_context_by_type_and_name("pipeline_run", spec)
    if exact is not None and (pipeline is None or store.pipeline_of_run(exact) == pipeline):
        return exact
    prefix = spec.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = _run_contexts(store, pipeline, last=2, name_filter=f"name LIKE {_q(prefix + '%')}") if spec else []
    if len(like) == 1:
        return like[0]
    if len(like) > 1:
        raise LineageNotFoundError(
            f"run {spec!r} is ambiguous: {like[0].name}, {like[1].name}, ... start with it; give more of the id."
        )
    raise LineageNotFoundError(
        f"{store.description} has no run {spec!r}"
        + (f" of pipeline {pipeline!r}" if pipeline else "")
        + ": give a run id from `conveyor runs`, a unique prefix of one, or latest / previous / latest~N."
    )


def _runs_from_contexts(store: Store, contexts: Sequence[Any]) -> list[Run]:
    per_run = {ctx.id: list(store.mlmd.get_executions_by_context(ctx.id)) for ctx in contexts}
    everything = [e for es in per_run.values() for e in es]
    pipeline_of = {e.id: store.pipeline_of_run(ctx) for ctx in contexts for e in per_run[ctx.id]}
    nodes = _node_names(store, everything, pipeline_of)
    events = _events(store, [e.id for e in everything])
    found = []
    for ctx in contexts:
        executions = sorted(per_run[ctx.id], key=lambda e: (e.create_time_since_epoch, e.id))
        node_runs = [
            NodeRun(
                node=nodes[e.id], execution_id=e.id, state=_state(e), type=store.execution_type(e.type_id),
                started=e.create_time_since_epoch / 1000, seconds=_seconds(e),
                rerun_reason=store.value(e, _RERUN_REASON), error=_error(store, e),
                inputs=events[e.id][0], outputs=events[e.id][1],
            )
            for e in executions
        ]
        states = {n.state for n in node_runs}
        state = next((s for s in ("FAILED", "RUNNING", "CANCELED") if s in states), "COMPLETE" if node_runs else "NEW")
        start = min((e.create_time_since_epoch for e in executions), default=ctx.create_time_since_epoch)
        end = max((e.last_update_time_since_epoch for e in executions), default=start)
        found.append(Run(ctx.name, store.pipeline_of_run(ctx), state, start / 1000, (end - start) / 1000,
                         node_runs, ctx.id))
    return found


def runs(store: Store | str, pipeline: str | None = None, last: int | None = None) -> list[Run]:
    """The runs, newest first (of one pipeline, the `last` newest)."""
    store = open_store(store)
    return _runs_from_contexts(store, _run_contexts(store, pipeline, last=last))


def run(store: Store | str, run_id: str, pipeline: str | None = None) -> Run:
    """One run, by id or shortcut, with each node's state and duration."""
    store = open_store(store)
    return _runs_from_contexts(store, [resolve_run(store, run_id, pipeline)])[0]


# ---------------------------------------------------------------------------
# Artifacts and provenance
# ---------------------------------------------------------------------------


def _artifact_infos(store: Store, protos: Iterable[Any]) -> dict[int, ArtifactInfo]:
    infos = {}
    for a in protos:
        local, files = store.locate(a.uri)
        infos[a.id] = ArtifactInfo(
            id=a.id, type=store.artifact_type(a.type_id), uri=a.uri,
            state=_ARTIFACT_STATES[a.state] if a.state < len(_ARTIFACT_STATES) else str(a.state),
            created=a.create_time_since_epoch / 1000, properties=store.values(a), local_path=local, files=files,
        )
    return infos


def artifacts(store: Store | str, ids: Sequence[int]) -> list[ArtifactInfo]:
    """Artifacts by id (those that exist), in the order asked."""
    store = open_store(store)
    found = _artifact_infos(store, store.mlmd.get_artifacts_by_id(list(ids))) if ids else {}
    return [found[i] for i in ids if i in found]


def _artifacts_by_uri(store: Store, uris: Sequence[str]) -> list[Any]:
    found = []
    for uri in uris:
        found += store.mlmd.get_artifacts(list_options=_options(f"uri = {_q(uri)}", newest_first=True))
    return found


def artifact(store: Store | str, id_or_uri: int | str) -> ArtifactInfo:
    """An artifact by id, by URI, by the path of its copied files under the
    store's folder, or by the path of a served model (its PushedModel)."""
    store = open_store(store)
    if isinstance(id_or_uri, int) or str(id_or_uri).isdigit():
        found = store.mlmd.get_artifacts_by_id([int(id_or_uri)])
        if not found:
            raise LineageNotFoundError(
                f"{store.description} has no artifact #{id_or_uri}; `conveyor show RUN` lists a run's artifacts."
            )
        return _artifact_infos(store, found)[found[0].id]
    text = str(id_or_uri).rstrip("/") or "/"
    candidates = [text]
    if not text.startswith(("s3://", "gs://", "file://")):
        candidates.append(os.path.abspath(text))
    found = _artifacts_by_uri(store, candidates)
    if not found:
        # A copied store: <store>/root/<node>/<key>/<id> was recorded as <old root>/<node>/<key>/<id>.
        for tail in store.recorded_uri_candidates(text):
            pattern = tail.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            found = [a for a in store.mlmd.get_artifacts(list_options=_options(f"uri LIKE {_q('%' + pattern)}"))
                     if a.uri.endswith(tail)]
            if found:
                break
    if found:
        best = max(found, key=lambda a: a.id)
        return _artifact_infos(store, [best])[best.id]
    served = _served_by_path(store, text)
    if served is not None:
        return served
    raise LineageNotFoundError(
        f"{store.description} has no artifact {text!r}: expected an artifact id, an artifact URI (or its "
        f"copy under the store's folder), or the path of a pushed model; `conveyor show RUN` lists artifacts."
    )


def _producer(store: Store, artifact_id: int) -> Any | None:
    """The first execution with an OUTPUT event for the artifact; a
    resolver's INTERNAL_OUTPUT only when nothing output it."""
    for kind in ("OUTPUT", "INTERNAL_OUTPUT"):
        found = store.mlmd.get_executions(list_options=_options(
            f"events_0.artifact_id = {int(artifact_id)} AND events_0.type = {kind}", limit=1))
        if found:
            return found[0]
    return None


def producer(store: Store | str, artifact_ref: int | str | ArtifactInfo) -> ExecutionInfo | None:
    """The execution that made the artifact (None for one imported or
    registered without an execution)."""
    store = open_store(store)
    target = artifact_ref if isinstance(artifact_ref, ArtifactInfo) else artifact(store, artifact_ref)
    found = _producer(store, target.id)
    return _execution_infos(store, [found])[found.id] if found is not None else None


def _consumer_protos(store: Store, artifact_ids: Sequence[int]) -> list[Any]:
    found: dict[int, Any] = {}
    for chunk in _chunks(list(artifact_ids)):
        for e in store.mlmd.get_executions(list_options=_options(
                f"events_0.artifact_id IN ({_ids(chunk)}) AND events_0.type = INPUT")):
            found[e.id] = e
    return [found[i] for i in sorted(found)]


def consumers(store: Store | str, artifact_ref: int | str | ArtifactInfo) -> list[ExecutionInfo]:
    """The executions that took the artifact as an input, oldest first."""
    store = open_store(store)
    target = artifact_ref if isinstance(artifact_ref, ArtifactInfo) else artifact(store, artifact_ref)
    infos = _execution_infos(store, _consumer_protos(store, [target.id]))
    return [infos[i] for i in sorted(infos)]


def provenance(store: Store | str, artifact_ref: int | str | ArtifactInfo,
               direction: Literal["up", "down"] = "up") -> Provenance:
    """The graph of an artifact's provenance: `up`, every execution and
    artifact it came from, to the executions that read the source files
    (their parameters name them, their fingerprints identify them); `down`,
    everything made from it. Walked level by level with batched queries."""
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
    store = open_store(store)
    target = artifact_ref if isinstance(artifact_ref, ArtifactInfo) else artifact(store, artifact_ref)
    artifacts = {target.id: target}
    executions: dict[int, ExecutionInfo] = {}
    frontier = [target.id]
    while frontier:
        if direction == "up":
            protos = {}
            for a in frontier:
                producer = _producer(store, a)
                if producer is not None and producer.id not in executions:
                    protos[producer.id] = producer
            new = _execution_infos(store, list(protos.values()))
            next_ids = {a for e in new.values() for ids in e.inputs.values() for a in ids}
        else:
            new = {e.id: e for e in _execution_infos(
                store, [p for p in _consumer_protos(store, frontier) if p.id not in executions]).values()}
            next_ids = {a for e in new.values() for ids in e.outputs.values() for a in ids}
        executions.update(new)
        frontier = sorted(next_ids - set(artifacts))
        if frontier:
            artifacts.update(_artifact_infos(store, store.mlmd.get_artifacts_by_id(frontier)))
    return Provenance(target.id, direction, artifacts, executions)


def _pushed(store: Store, a: Any) -> bool:
    value = store.value(a, "pushed")
    return value not in (None, 0, "0", "", False)


def _served_by_path(store: Store, path: str) -> ArtifactInfo | None:
    """The PushedModel whose destination is `path` or holds it (a file of
    the served model), else whose version is its last folder's name."""
    path = path.rstrip("/")
    candidates = []
    p = path
    while p and p not in ("/", "."):
        candidates.append(p)
        p = os.path.dirname(p)
    candidates = candidates[:8]
    if not candidates:
        return None
    quoted = ", ".join(_q(c) for c in candidates)
    found = []
    for field in ("custom_properties", "properties"):
        found += store.mlmd.get_artifacts(list_options=_options(
            f"type = 'PushedModel' AND {field}.pushed_destination.string_value IN ({quoted})"))
    if not found:
        versions = ", ".join(_q(os.path.basename(c)) for c in candidates)
        for field in ("custom_properties", "properties"):
            found += store.mlmd.get_artifacts(list_options=_options(
                f"type = 'PushedModel' AND {field}.pushed_version.string_value IN ({versions})"))
    found = [a for a in found if _pushed(store, a)]
    if not found:
        return None
    best = max(found, key=lambda a: a.id)
    return _artifact_infos(store, [best])[best.id]


def served_model(store: Store | str, path: str | None = None, pipeline: str | None = None) -> ArtifactInfo:
    """What is being served: the latest PushedModel that was pushed (of a
    pipeline), or the one a served model's path (its push destination or a
    file in it) came from. Its `provenance` says how it was made."""
    store = open_store(store)
    if path is not None:
        found = _served_by_path(store, path)
        if found is None:
            raise LineageNotFoundError(
                f"no pushed model in {store.description} was pushed to {path!r} or a folder holding it: expected "
                f"the path of a served model version (a Pusher's destination, e.g. <serving dir>/<version>)."
            )
        return found
    batch, offset = 50, 0
    scope = ""
    if pipeline is not None:
        scope = f" AND contexts_a.type = 'pipeline' AND contexts_a.name = {_q(pipeline)}"
    while True:
        page = store.mlmd.get_artifacts(list_options=_options(
            f"type = 'PushedModel'{scope}" + (f" AND id < {offset}" if offset else ""), limit=batch,
            newest_first=True))
        for a in page:
            if _pushed(store, a):
                return _artifact_infos(store, [a])[a.id]
        if len(page) < batch:
            break
        offset = page[-1].id
    raise LineageNotFoundError(
        f"{store.description} records no pushed model"
        + (f" of pipeline {pipeline!r}" if pipeline else "")
        + ": no PushedModel artifact has pushed=1 (a Pusher that ran with a blessed model records one)."
    )


# ---------------------------------------------------------------------------
# Why a node ran, and what changed between runs
# ---------------------------------------------------------------------------


def _node_execution(store: Store, run_ctx: Any, node_id: str) -> Any | None:
    """The node's (last) execution in a run: through its node context, or
    Conveyor's `__component_id__` when the node context has another name."""
    pipeline = store.pipeline_of_run(run_ctx)
    node_ctx = _q(f"{pipeline}.{node_id}")
    found = store.mlmd.get_executions(list_options=_options(
        f"contexts_a.id = {run_ctx.id} AND contexts_b.type = 'node' AND contexts_b.name = {node_ctx}"))
    if not found:
        found = store.mlmd.get_executions(list_options=_options(
            f"contexts_a.id = {run_ctx.id} AND custom_properties.{_COMPONENT_ID}.string_value = {_q(node_id)}"))
    return max(found, key=lambda e: e.id) if found else None


def _previous(store: Store, e: Any, pipeline: str, node_id: str) -> Any | None:
    """The node's newest COMPLETE execution before `e`: the one its cache
    key is compared with when it runs."""
    base = f"id < {e.id} AND last_known_state = COMPLETE"
    found = store.mlmd.get_executions(list_options=_options(
        f"{base} AND contexts_a.type = 'node' AND contexts_a.name = {_q(f'{pipeline}.{node_id}')}",
        limit=1, newest_first=True))
    if not found:
        found = store.mlmd.get_executions(list_options=_options(
            f"{base} AND custom_properties.{_COMPONENT_ID}.string_value = {_q(node_id)}", limit=1, newest_first=True))
    return found[0] if found else None


def _cache_key(store: Store, e: Any) -> str | None:
    """Conveyor's recorded cache key, or the name of TFX's `execution_cache` context."""
    key = store.value(e, _CACHE_KEY)
    if key is None:
        ctx = _context_of(store, [e.id], "execution_cache").get(e.id)
        key = ctx.name if ctx is not None else None
    return key


def _explain(old: dict[str, str], new: dict[str, str]) -> list[str]:
    from conveyor.pipeline.cache import explain_change

    return explain_change(old, new)


def _parts_of(store: Store, e: Any) -> dict[str, str]:
    inputs = _events(store, [e.id])[e.id][0]
    return _key_parts(store, e, store.execution_type(e.type_id), inputs)


def why(store: Store | str, run_id: str, node_id: str, pipeline: str | None = None) -> CacheExplanation:
    """Why a node of a run came from the cache (whose outputs it reused) or
    did not (what changed in its cache key since its last execution, or why
    there was nothing to reuse)."""
    store = open_store(store)
    run_ctx = resolve_run(store, run_id, pipeline)
    pipeline_name = store.pipeline_of_run(run_ctx)
    e = _node_execution(store, run_ctx, node_id)
    if e is None:
        nodes = ", ".join(n.node for n in _runs_from_contexts(store, [run_ctx])[0].nodes)
        raise LineageNotFoundError(
            f"run {run_ctx.name} has no execution of node {node_id!r} (it did not run: an upstream node "
            f"failed, or the run stopped before it); its nodes are {nodes or 'none'}."
        )
    state, type_name = _state(e), store.execution_type(e.type_id)
    key = _cache_key(store, e)
    recorded = store.value(e, _RERUN_REASON)
    explanation = CacheExplanation(run_ctx.name, node_id, e.id, state, state == "CACHED", [], [], None, None,
                                   key, recorded)

    def run_of(execution_id: int) -> str | None:
        ctx = _context_of(store, [execution_id], "pipeline_run").get(execution_id)
        return ctx.name if ctx is not None else None

    if state == "CACHED":
        outputs = _events(store, [e.id])[e.id][1]
        first = next((a for ids in outputs.values() for a in ids), None)
        source = _producer(store, first) if first is not None else None
        if source is not None and source.id != e.id:
            explanation.previous_execution, explanation.previous_run = source.id, run_of(source.id)
            explanation.reasons.append(
                f"from the cache: its cache key matched execution #{source.id} (run {explanation.previous_run}), "
                f"whose outputs were still there, so they were reused"
            )
        else:
            explanation.reasons.append(
                "from the cache: the outputs of an earlier execution with the same key were reused")
        return explanation
    if _is_resolver(type_name, node_id) and key is None:
        explanation.reasons.append("a resolver: it always runs, to pick artifacts from the store; it is never cached")
        return explanation
    previous = _previous(store, e, pipeline_name, node_id)
    if previous is None:
        explanation.reasons.append(
            "not from the cache: the first execution of this node, so there was nothing to reuse")
    else:
        explanation.previous_execution, explanation.previous_run = previous.id, run_of(previous.id)
        explanation.changes = _explain(_parts_of(store, previous), _parts_of(store, e))
        if explanation.changes:
            explanation.reasons.append(
                f"not from the cache: its cache key differs from execution #{previous.id}'s "
                f"(run {explanation.previous_run}): " + "; ".join(explanation.changes))
        elif key is not None and key != _cache_key(store, previous):
            explanation.reasons.append(
                f"not from the cache: its cache key differs from execution #{previous.id}'s "
                f"(run {explanation.previous_run}) in something MLMD does not record (e.g. the executor's "
                f"spec); its inputs, parameters and code are the same")
        elif key is None:
            explanation.reasons.append(
                f"not from the cache: the inputs, parameters and code recorded are those of execution "
                f"#{previous.id} (run {explanation.previous_run}); the cache was off for this run, or its "
                f"key covers something not recorded in MLMD (e.g. the executor's spec)")
        else:
            explanation.reasons.append(
                f"not from the cache although its cache key is that of execution #{previous.id} "
                f"(run {explanation.previous_run}): the cache was off (--no-cache, --from) or that "
                f"execution's outputs were gone or incomplete")
    if state == "FAILED":
        explanation.reasons.append(f"it failed: {(_error(store, e) or 'no error recorded').splitlines()[0]}")
    return explanation


def _metrics(path: str | None) -> dict[str, float] | None:
    """The overall slice's metrics of a TFMA evaluation folder, or None."""
    import glob

    if not path:
        return None
    files = sorted(glob.glob(os.path.join(path, "metrics*")))
    if not files:
        return None
    from conveyor.components.examples_io import read_tfrecords

    pb2 = _tfma_metrics_pb2()
    found: dict[str, float] = {}
    for file in files:
        with open(file, "rb") as f:
            for record in read_tfrecords(f):
                m = pb2.MetricsForSlice.FromString(record)
                if m.slice_key.single_slice_keys:
                    continue
                for kv in m.metric_keys_and_values:
                    if kv.key.is_diff or kv.key.model_name == "baseline" or not kv.value.HasField("double_value"):
                        continue
                    name = kv.key.name + (f" ({kv.key.output_name})" if kv.key.output_name else "")
                    # TFMA's own metric (example_weighted set) wins over the model's compiled twin.
                    if name not in found or kv.key.HasField("example_weighted"):
                        found[name] = kv.value.double_value.value
                for name, value in m.metrics.items():
                    if value.HasField("double_value"):
                        found.setdefault(name, value.double_value.value)
    return found


def _tfma_metrics_pb2() -> Any:
    """TFMA's MetricsForSlice proto module, loaded from its file alone:
    importing the tensorflow_model_analysis package starts TensorFlow (seconds)."""
    import importlib.util
    import sys

    name = "tensorflow_model_analysis.proto.metrics_for_slice_pb2"
    if name in sys.modules:
        return sys.modules[name]
    if "_conveyor_tfma_metrics_pb2" in sys.modules:
        return sys.modules["_conveyor_tfma_metrics_pb2"]
    package = importlib.util.find_spec("tensorflow_model_analysis")
    if package is None or not package.submodule_search_locations:
        raise LineageNotFoundError("tensorflow_model_analysis is not installed: metrics cannot be read")
    path = os.path.join(list(package.submodule_search_locations)[0], "proto", "metrics_for_slice_pb2.py")
    spec = importlib.util.spec_from_file_location("_conveyor_tfma_metrics_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_conveyor_tfma_metrics_pb2"] = module
    return module


def _gone(*found: ArtifactInfo) -> str:
    return " and ".join(f"#{x.id} ({x.uri})" for x in found if x.local_path is None)


def _schema_changes(a: ArtifactInfo, b: ArtifactInfo) -> list[str]:
    from conveyor import schema as schema_lib

    return schema_lib.diff(schema_lib.load(a.local_path or ""), schema_lib.load(b.local_path or ""))


def diff(store: Store | str, run_a: str, run_b: str, pipeline: str | None = None) -> RunDiff:
    """Run b against run a: which nodes re-ran in b and why (the cache-key
    parts that changed: parameters, user code, input data, input
    artifacts), and for outputs that differ, schema and metric changes."""
    store = open_store(store)
    ctx_a, ctx_b = resolve_run(store, run_a, pipeline), resolve_run(store, run_b, pipeline)
    protos_a = list(store.mlmd.get_executions_by_context(ctx_a.id))
    protos_b = list(store.mlmd.get_executions_by_context(ctx_b.id))
    infos = _execution_infos(store, protos_a + protos_b)
    by_id = {e.id: e for e in protos_a + protos_b}

    def by_node(protos: list[Any]) -> dict[str, ExecutionInfo]:
        found: dict[str, ExecutionInfo] = {}
        for e in sorted(protos, key=lambda e: e.id):
            found[infos[e.id].node] = infos[e.id]
        return found

    nodes_a, nodes_b = by_node(protos_a), by_node(protos_b)
    order = list(nodes_b) + [n for n in nodes_a if n not in nodes_b]
    node_diffs = []
    differing_outputs: list[tuple[str, str, int, int]] = []
    for node in order:
        a, b = nodes_a.get(node), nodes_b.get(node)
        parts_a = _key_parts(store, by_id[a.id], a.type, a.inputs) if a else {}
        parts_b = _key_parts(store, by_id[b.id], b.type, b.inputs) if b else {}
        changes = _explain(parts_a, parts_b) if a and b else (["only in run a"] if a else ["only in run b"])
        params = {k: ((a.parameters.get(k) if a else None), (b.parameters.get(k) if b else None))
                  for k in sorted(set(a.parameters if a else {}) | set(b.parameters if b else {}))}
        params = {k: v for k, v in params.items() if _canonical(v[0]) != _canonical(v[1])}
        code = _pairs(a.code if a else {}, b.code if b else {})
        prints = _pairs(a.fingerprints if a else {}, b.fingerprints if b else {})
        same_outputs = bool(a and b and a.outputs == b.outputs)
        if b and b.state == "CACHED" and same_outputs:
            # b reused a's outputs: what only one side recorded (TFX records less
            # on a cached execution, e.g. no span or input_fingerprint) is no change.
            changes = []
            params = {k: v for k, v in params.items() if None not in v}
            code = {k: v for k, v in code.items() if None not in v}
            prints = {k: v for k, v in prints.items() if None not in v}
        if a and b and not same_outputs:
            for key in sorted(set(a.outputs) & set(b.outputs)):
                if a.outputs[key] and b.outputs[key] and a.outputs[key] != b.outputs[key]:
                    differing_outputs.append((node, key, a.outputs[key][0], b.outputs[key][0]))
        node_diffs.append(NodeDiff(
            node=node, state_a=a.state if a else None, state_b=b.state if b else None,
            execution_a=a.id if a else None, execution_b=b.id if b else None,
            reran=bool(b and b.state != "CACHED"), changes=changes, parameters=params, code=code,
            fingerprints=prints, outputs_same=same_outputs,
            resolver=_is_resolver((b or a).type if (b or a) else "", node),
        ))
    schema: dict[str, list[str]] = {}
    metrics: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    notes: list[str] = []
    wanted = sorted({i for _, _, x, y in differing_outputs for i in (x, y)})
    arts = _artifact_infos(store, store.mlmd.get_artifacts_by_id(wanted)) if wanted else {}
    for node, key, x, y in differing_outputs:
        if x not in arts or y not in arts or arts[y].type not in ("Schema", "ModelEvaluation"):
            continue
        where, kind = f"{node}.{key}", arts[y].type
        gone = _gone(arts[x], arts[y])
        if gone:
            notes.append(f"{kind} {where} not compared: the files of {gone} are gone")
            continue
        try:
            if kind == "Schema":
                schema[where] = _schema_changes(arts[x], arts[y])
            else:
                ma, mb = _metrics(arts[x].local_path), _metrics(arts[y].local_path)
                if ma is None or mb is None:
                    notes.append(f"{kind} {where} not compared: no metrics file in "
                                 f"{arts[x].local_path if ma is None else arts[y].local_path}")
                    continue
                metrics[where] = {k: (ma.get(k), mb.get(k)) for k in sorted(set(ma) | set(mb))
                                  if ma.get(k) != mb.get(k)}
        except (ConveyorError, ValueError, OSError) as e:
            notes.append(f"{kind} {where} not compared: {e}")
    return RunDiff(ctx_a.name, ctx_b.name, node_diffs, schema, metrics, notes)


def _pairs(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def logs(store: Store | str, run_id: str, node_id: str, pipeline: str | None = None) -> LogRecord:
    """Where the log of a node's execution in a run is, if one was recorded
    (an execution property named in LOG_PROPERTIES: a quiet Conveyor run
    records `__log_path__` on each execution that ran); otherwise `path` is
    None and `message` says so."""
    store = open_store(store)
    run_ctx = resolve_run(store, run_id, pipeline)
    e = _node_execution(store, run_ctx, node_id)
    if e is None:
        raise LineageNotFoundError(f"run {run_ctx.name} has no execution of node {node_id!r}.")
    for name in LOG_PROPERTIES:
        recorded = store.value(e, name)
        if recorded:
            local, files = store.locate(str(recorded))
            message = ("" if files != "gone" else
                       f"the log recorded for execution #{e.id} ({recorded}) is gone")
            return LogRecord(run_ctx.name, node_id, e.id, str(recorded), local, message)
    if _state(e) == "CACHED":
        why = "it was CACHED, so nothing ran (`why` names the execution whose outputs it reused)."
    elif _is_resolver(store.execution_type(e.type_id), node_id):
        why = "a resolver only picks artifacts from the store; its choice is in `show`."
    else:
        why = ("this store's executions carry no log path (not a quiet Conveyor run: TFX, or `conveyor run -v`); "
               "the run's own output (the terminal, or wherever it was redirected) has the node's messages.")
    return LogRecord(run_ctx.name, node_id, e.id, None, None,
                     f"no log was recorded for node {node_id!r} in run {run_ctx.name} (execution #{e.id}): {why}")


# ---------------------------------------------------------------------------
# Output: JSON, text, DOT
# ---------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Any result of this module (or a list of them) as JSON text."""
    if isinstance(obj, Provenance):
        data = _jsonable(obj)
        data["edges"] = [{"from": f, "to": t, "key": k} for f, t, k in obj.edges()]
        return json.dumps(data, indent=2, sort_keys=True)
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True)


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    try:  # TFX pretty-prints JSON parameters over many lines
        text = json.dumps(json.loads(text), sort_keys=True) if text[:1] in "{[" else text
    except ValueError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _node_line(n: NodeRun) -> str:
    line = f"  {n.node:<30} {n.state:<9} {n.seconds:7.1f}s  execution #{n.execution_id}"
    if n.rerun_reason:
        line += f"  re-run: {n.rerun_reason}"
    if n.error:
        line += f"  error: {n.error.splitlines()[0] if n.error.strip() else n.error}"
    return line


def _run_header(r: Run) -> str:
    counts: dict[str, int] = {}
    for n in r.nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    return (f"run {r.run_id}  pipeline {r.pipeline}  {r.state}  started {_when(r.started)}  "
            f"{r.seconds:.1f}s  ({summary or 'no executions'})")


def format_run(r: Run) -> str:
    return "\n".join([_run_header(r), *(_node_line(n) for n in r.nodes)])


def format_runs(found: Sequence[Run], pipeline: str | None = None) -> str:
    if not found:
        return "no runs recorded" + (f" of pipeline {pipeline!r}" if pipeline else "")
    return "\n".join(format_run(r) for r in found)


def format_artifact_line(a: ArtifactInfo) -> str:
    where = "" if a.files == "present" and a.local_path == a.uri else (
        "  [files gone]" if a.files == "gone" else
        f"  [files at {a.local_path}]" if a.files == "present" else "  [files not checked]")
    return f"{a.type} #{a.id}  {a.uri}{where}"


def _execution_lines(e: ExecutionInfo, indent: str, first: str = "") -> list[str]:
    lines = [f"{indent}{first}{e.node} ({e.type.rsplit('.', 1)[-1]}), execution #{e.id}, {e.state}"
             + (f", run {e.run_id}" if e.run_id else "")]
    indent += " " * len(first)
    for k, v in sorted(e.parameters.items()):
        if v not in (None, "", "[]", "{}", "null"):
            lines.append(f"{indent}   {k} = {_short(v)}")
    for f, digest in sorted(e.code.items()):
        lines.append(f"{indent}   code {f} sha256:{digest[:12]}")
    for name, fingerprint in sorted(e.fingerprints.items()):
        lines.append(f"{indent}   data {name} {_short(fingerprint, 80)}")
    return lines


def format_artifact(a: ArtifactInfo, producer: ExecutionInfo | None = None,
                    used_by: Sequence[ExecutionInfo] = ()) -> str:
    lines = [format_artifact_line(a), f"  state {a.state}, created {_when(a.created)}"]
    if a.files == "gone":
        lines.append("  files: gone (not at the recorded URI, nor under the store's folder); shown from its metadata")
    elif a.local_path and a.local_path != a.uri:
        lines.append(f"  files: {a.local_path} (a copy; recorded at {a.uri})")
    for k, v in sorted(a.properties.items()):
        lines.append(f"  {k} = {_short(v)}")
    if producer is not None:
        lines.append("  produced by:")
        lines += _execution_lines(producer, "    ")
    if used_by:
        lines.append(f"  consumed by {len(used_by)} execution(s):")
        for e in used_by:
            lines.append(f"    {e.node}, execution #{e.id}, {e.state}" + (f", run {e.run_id}" if e.run_id else ""))
    return "\n".join(lines)


def format_provenance(graph: Provenance) -> str:
    """The graph as an indented tree from its root artifact; an artifact
    reached twice is spelled out once."""
    shown: set[int] = set()
    # An artifact's producer is the first execution that output it.
    producers: dict[int, ExecutionInfo] = {}
    for e in sorted(graph.executions.values(), key=lambda e: e.id, reverse=True):
        for ids in e.outputs.values():
            for a in ids:
                producers[a] = e
    readers: dict[int, list[ExecutionInfo]] = {}
    for e in sorted(graph.executions.values(), key=lambda e: e.id):
        for ids in e.inputs.values():
            for a in ids:
                readers.setdefault(a, []).append(e)

    def walk(artifact_id: int, indent: str) -> list[str]:
        a = graph.artifacts[artifact_id]
        line = indent + format_artifact_line(a)
        if artifact_id in shown:
            return [line + "  (see above)"]
        shown.add(artifact_id)
        lines = [line]
        if graph.direction == "up":
            e = producers.get(artifact_id)
            if e is None:
                return lines
            lines += _execution_lines(e, indent + "  ", "<- ")
            for key, ids in sorted(e.inputs.items()):
                for child in ids:
                    if child in graph.artifacts:
                        lines.append(f"{indent}     [{key}]")
                        lines += walk(child, indent + "       ")
        else:
            for e in readers.get(artifact_id, []):
                lines.append(f"{indent}  -> {e.node}, execution #{e.id}, {e.state}"
                             + (f", run {e.run_id}" if e.run_id else ""))
                for key, ids in sorted(e.outputs.items()):
                    for child in ids:
                        if child in graph.artifacts:
                            lines.append(f"{indent}     [{key}]")
                            lines += walk(child, indent + "       ")
        return lines

    return "\n".join(walk(graph.root, ""))


def provenance_dot(graph: Provenance) -> str:
    """The graph in Graphviz DOT: artifacts as boxes, executions as ellipses."""

    def label(text: str) -> str:
        return json.dumps(text)

    lines = ["digraph lineage {", "  rankdir=LR;"]
    for a in sorted(graph.artifacts.values(), key=lambda a: a.id):
        style = ", style=dashed" if a.files == "gone" else ""
        lines.append(f"  a{a.id} [shape=box{style}, label={label(f'{a.type} #{a.id}')}];")
    for e in sorted(graph.executions.values(), key=lambda e: e.id):
        lines.append(f"  e{e.id} [shape=ellipse, label={label(f'{e.node} #{e.id} {e.state}')}];")
    for source, target, key in graph.edges():
        lines.append(f"  {source} -> {target} [label={label(key)}];")
    lines.append("}")
    return "\n".join(lines)


def format_diff(d: RunDiff) -> str:
    lines = [f"run a {d.run_a}", f"run b {d.run_b}", f"  {'node':<30} {'a':<9} b"]
    for n in d.nodes:
        if n.state_b == "CACHED":
            what = "cached: the outputs of run a" if n.outputs_same else "cached: the outputs of another run"
        elif n.state_b is None or n.state_a is None:
            what = "; ".join(n.changes)
        elif n.resolver:
            what = "ran again (a resolver runs every time)"
        elif n.changes:
            what = "re-ran: " + "; ".join(n.changes)
        else:
            what = "re-ran with the same cache key (cache off, or earlier outputs missing)"
        lines.append(f"  {n.node:<30} {n.state_a or '-':<9} {n.state_b or '-':<9} {what}")
    params = [(n.node, k, v) for n in d.nodes for k, v in n.parameters.items()]
    if params:
        lines.append("parameters:")
        lines += [f"  {node}.{k}: {_short(a, 60)} -> {_short(b, 60)}" for node, k, (a, b) in params]
    code = [(n.node, k, v) for n in d.nodes for k, v in n.code.items()]
    if code:
        lines.append("code:")
        lines += [f"  {node} {k}: {(a or '-')[:12]} -> {(b or '-')[:12]}" for node, k, (a, b) in code]
    prints = [(n.node, k, v) for n in d.nodes for k, v in n.fingerprints.items()]
    if prints:
        lines.append("data:")
        lines += [f"  {node} {k}: {_short(a or '-', 50)} -> {_short(b or '-', 50)}" for node, k, (a, b) in prints]
    for where, changes in d.schema.items():
        lines.append(f"schema {where}: " + ("no changes" if not changes else f"{len(changes)} change(s)"))
        lines += [f"  {c}" for c in changes]
    for where, changed in d.metrics.items():
        lines.append(f"metrics {where}: " + ("no changes" if not changed else ""))
        for name, (a, b) in changed.items():
            delta = f" ({b - a:+.4g})" if a is not None and b is not None else ""
            lines.append(f"  {name}: {_num(a)} -> {_num(b)}{delta}")
    lines += [f"note: {n}" for n in d.notes]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_why(x: CacheExplanation) -> str:
    lines = [f"{x.node} in run {x.run_id}: {x.state} (execution #{x.execution_id})"]
    lines += [f"  {r}" for r in x.reasons]
    if x.cache_key:
        lines.append(f"  cache key {x.cache_key[:16]}")
    return "\n".join(lines)
