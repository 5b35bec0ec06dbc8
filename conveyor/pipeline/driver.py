"""Driver and publisher: what happens around an executor, for any orchestrator.

Around each node, an orchestrator

1. (driver) records a RUNNING execution, looks the node up in the cache
   (`cache_key`, `cache_hit`, `rerun_reason`), allocates its output URIs
   (`output_artifacts`), stages its user code where workers can read it
   (`stage_user_code`, `check_code_reaches_workers`) and builds its
   `conveyor.launch.Invocation` (`invocation`);
2. has the invocation executed, here (`conveyor.launch.execute`) or
   anywhere (`python -m conveyor.launch`);
3. (publisher) publishes the outputs the result names (`publish`: each
   artifact's completion marker, then MLMD, LIVE), or records the failure and
   removes what the executor wrote (`fail`, `remove_outputs`).

`conveyor.pipeline.runner.LocalRunner` is one such orchestrator.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from conveyor import fs
from conveyor.artifacts import Artifact
from conveyor.components.base import fingerprint_files, snapshot_import_path, user_code_files
from conveyor.errors import ExecutionTakenOverError, PipelineDefinitionError
from conveyor.launch import Invocation, InvocationResult, artifacts_to_json
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import cache
from conveyor.pipeline.dsl import Component, to_jsonable
from conveyor.secrets import redact

__all__ = [
    "component_type_name",
    "execution_properties",
    "cache_key",
    "previous_executions",
    "running_twin",
    "cache_hit",
    "rerun_reason",
    "output_artifacts",
    "stage_user_code",
    "check_code_reaches_workers",
    "remote_workers",
    "beam_args_for",
    "scratch_dir",
    "invocation",
    "publish",
    "fail",
    "remove_outputs",
    "discard_partial",
    "owner",
    "owner_alive",
    "abandoned",
    "stale_limit",
    "Heartbeat",
    "reconcile",
    "stage_class_file",
    "CODE_DIR",
    "HEARTBEAT_SECONDS",
    "STALE_AFTER_SECONDS",
    "STALE_AFTER_ENV",
]

# Under the pipeline root: user code staged for remote workers, by content.
CODE_DIR = "_code"
# How often a run refreshes the heartbeat of its RUNNING executions, and how
# long an execution whose owner runs on another host may go without one
# before a run takes it for abandoned (its machine crashed): many periods, so
# a busy store or a slow beat is not taken for a death. Read when used, so
# tests can shorten them; the limit is also LocalRunner(stale_after=...) or
# $CONVEYOR_STALE_AFTER (seconds).
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0
STALE_AFTER_ENV = "CONVEYOR_STALE_AFTER"


def component_type_name(component: Component) -> str:
    """The node's MLMD execution type: the one TFX records every resolver
    under for a resolver (`EXECUTION_TYPE`; its outputs become
    INTERNAL_OUTPUT), the component's own type otherwise."""
    return getattr(component, "EXECUTION_TYPE", None) or component.type_name()


def execution_properties(component: Component, params: dict[str, Any]) -> dict[str, Any]:
    """The custom properties of a node's execution: its parameters under
    their own names (as TFX: booleans as 0/1, JSON for structured ones;
    secrets masked), its component id, and its component class, executor
    and class file (what `conveyor.replay` runs again)."""
    properties = {name: _mlmd_value(v) for name, v in redact(params).items()}
    properties[mdstore.COMPONENT_ID] = component.id
    properties[mdstore.COMPONENT_CLASS] = _class_path(type(component))
    properties[mdstore.EXECUTOR] = _executor_path(component)
    properties[mdstore.CODE_FILE] = _class_file(type(component)) or None
    return properties


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _executor_path(component: Component) -> str:
    """The executor as an invocation names it: "module:function", or the
    class's own EXECUTOR attribute (a function component's)."""
    executor = component.EXECUTOR if isinstance(component.EXECUTOR, str) else ""
    return executor or f"{_class_path(type(component))}.EXECUTOR"


def _mlmd_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)  # TFX records a boolean parameter as an int
    return value if isinstance(value, (str, int, float)) else json.dumps(value)


# -- cache ---------------------------------------------------------------------


def cache_key(
    component: Component, inputs: dict[str, list[Artifact]], params: dict[str, Any]
) -> tuple[str | None, dict[str, str] | None]:
    """(the cache key, its parts), or (None, None) when the node cannot be cached."""
    parts = cache.cache_key_parts(component, inputs, params)
    return (cache.digest(parts) if parts is not None else None), parts


def previous_executions(md: Metadata, node_context_id: int) -> list[Any]:
    """The node's completed executions, newest first."""
    pb = mdstore._pb()
    done = [e for e in md.executions(node_context_id) if e.last_known_state == pb.Execution.COMPLETE]
    return sorted(done, key=lambda e: e.id, reverse=True)


def cache_hit(md: Metadata, previous: list[Any], key: str) -> dict[str, list[Artifact]] | None:
    """The outputs of the newest earlier execution with this key whose
    outputs are all still there and whole (their completion marker)."""
    for e in previous:
        prop = e.custom_properties.get(mdstore.CACHE_KEY)
        if prop is None or prop.string_value != key:
            continue
        outputs = md.io_of(e.id, "OUTPUT")
        if all(fs.is_complete(a.uri) for arts in outputs.values() for a in arts):
            return outputs
    return None


def running_twin(md: Metadata, node_context_id: int, key: str, own_owner: str,
                 stale_after: float | None = None) -> Any | None:
    """A RUNNING execution of the node with the same cache key, in another
    live process (a concurrent run of the same pipeline), or None: not one
    `abandoned` (`stale_after`: see `stale_limit`), which would never end."""
    pb = mdstore._pb()
    for e in md.executions(node_context_id):
        if e.last_known_state != pb.Execution.RUNNING:
            continue
        prop = e.custom_properties.get(mdstore.CACHE_KEY)
        who = e.custom_properties.get(mdstore.OWNER)
        if prop is None or prop.string_value != key or who is None or who.string_value == own_owner:
            continue
        if abandoned(e, stale_after) is None:
            return e
    return None


def rerun_reason(md: Metadata, previous: list[Any], key: str | None, parts: dict | None) -> list[str]:
    """Why a node runs although it ran before: the changed parts of its key."""
    if not previous:
        return []
    old_raw = previous[0].custom_properties.get(mdstore.CACHE_KEY_PARTS)
    if old_raw is None or not old_raw.string_value or parts is None:
        return []
    old = json.loads(md.text(old_raw))
    if old == parts:
        return ["cache disabled or earlier outputs missing"]
    return cache.explain_change(old, parts)


# -- before the executor -----------------------------------------------------------


def output_artifacts(root: str, component: Component, execution_id: int) -> dict[str, list[Artifact]]:
    """A new artifact per output key at `<root>/<node>/<key>/<execution id>`."""
    outputs = {
        key: [ch.type(fs.join(root, component.id, key, str(execution_id)))]
        for key, ch in component.outputs.items()
    }
    for arts in outputs.values():
        fs.makedirs(arts[0].uri)
    return outputs


def stage_user_code(component: Component, params: dict[str, Any], root: str,
                    hashed: dict[str, str] | None = None) -> dict[str, Any]:
    """`params` with each user module file of the node replaced by its
    snapshot under `<root>/_code/<content hash>/`, the local modules it
    imports beside it, so what runs is what the cache key hashed: an edit
    made while the run goes on reaches the next run, not this one. On an
    object store, Beam workers that see nothing of this machine load it from
    there too. `hashed` are the cache key's parts: a file whose snapshot is
    not what they hashed (edited between the two) is refused rather than
    run under a key that does not describe it. Each snapshot is written
    once, whole (on a local disk, renamed into place).

    Code named by import path ('package.module.function') is staged alike
    when its module is a source file of the user's (`_snapshot_source`):
    the parameter then names the snapshot too (`snapshot_import_path`), and
    the executor imports the module from it, its package-relative imports
    from beside it."""
    staged = dict(params)
    for name in component.CODE_PARAMS:
        module_file = params.get(name)
        if not (isinstance(module_file, str) and module_file.endswith(".py")) or not fs.isfile(module_file):
            continue  # not a file: the executor reports it
        staged[name] = _snapshot_code(component.id, module_file, root, hashed or {})
    for name in component.IMPORT_PATH_PARAMS:
        import_path = params.get(name)
        source = _snapshot_source(import_path) if isinstance(import_path, str) else None
        if source is not None:
            snapshot = _snapshot_code(component.id, source, root, hashed or {})
            staged[name] = snapshot_import_path(import_path, snapshot, source)
    return staged


def _snapshot_source(import_path: str) -> str | None:
    """The file of the module an import path names, when a snapshot of it
    and its local imports runs as the module would (the files the cache key
    hashes, see `Component.code_files`); else None, and the executor imports
    it by name, as hashed but as it is when it runs. Not snapshotted:
    - a module of an installed distribution (site-packages, the standard
      library): its package may hold more than the local imports we follow
      (data, compiled extensions, its own absolute imports), and it changes
      with an install, not with an edit during a run;
    - a module with a relative import above its own package (`from ..`):
      the snapshot holds its folder only, so that import could not be
      answered from it."""
    import ast
    import importlib.util

    module_name = import_path.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module_name) if module_name else None
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    if not (origin and origin.endswith(".py") and os.path.isfile(origin)) or _installed(origin):
        return None
    for path in user_code_files(origin):
        try:
            tree = ast.parse(fs.read_text(path), path)
        except (SyntaxError, UnicodeDecodeError):
            return None  # the import reports it, with file and line
        if any(isinstance(node, ast.ImportFrom) and node.level > 1 for node in ast.walk(tree)):
            return None
    return origin


def _installed(path: str) -> bool:
    """Whether a file belongs to an installed distribution or the standard library."""
    import site
    import sysconfig

    real = os.path.realpath(path)
    if {"site-packages", "dist-packages"} & set(real.split(os.sep)):
        return True
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {*site.getsitepackages(), site.getusersitepackages()}
    return any(real.startswith(os.path.realpath(r) + os.sep) for r in roots if r)


def stage_class_file(component: Component, root: str, hashed: dict[str, str] | None = None) -> str:
    """The file a process running the node elsewhere loads its component
    class from (`Invocation.code_file`, used when the class's module cannot
    be imported by name, as a function component's pipeline file): when the
    cache key hashed that file (a function component's), its snapshot under
    `<root>/_code/`, refused as `stage_user_code` refuses one edited since
    it was hashed; else the file itself."""
    import importlib.util

    cls = type(component)
    source = _class_file(cls)
    if not source or fs.abspath(source) not in {fs.abspath(f) for f in component.code_files()}:
        return source
    # A script's (`python pipeline.py`) is loaded from code_file too (see
    # conveyor.launch.SCRIPT_MODULE); another module's by name where it runs.
    if cls.__module__ != "__main__":
        try:
            if importlib.util.find_spec(cls.__module__) is not None:
                return source  # imported by name where it runs: code_file is not read
        except (ImportError, ValueError):
            return source  # no spec to go by: not loaded from code_file either
    return _snapshot_code(component.id, source, root, hashed or {})


def _snapshot_code(component_id: str, module_file: str, root: str, hashed: dict[str, str]) -> str:
    """The snapshot of a module file and its local imports; its path."""
    import hashlib

    base = fs.dirname(fs.abspath(module_file))
    # Each file is read once: the bytes named by the hash are the bytes written.
    contents = {fs.relpath(f, base): fs.read_bytes(f) for f in user_code_files(module_file)}
    digest = hashlib.sha256()
    for rel, data in sorted(contents.items()):
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    target = fs.join(root, CODE_DIR, digest.hexdigest()[:16])
    if not fs.is_complete(target):
        _write_snapshot(target, contents)
    for rel in sorted(contents):
        # fingerprint_files hashes a file's name and content, as the cache key did.
        if hashed.get(f"code:{rel}", None) not in (None, fingerprint_files([fs.join(target, rel)])):
            from conveyor.errors import ExecutorError

            raise ExecutorError(
                f"{component_id}: {fs.join(base, rel)} changed after this run computed the node's cache key "
                f"from it; nothing was run. Run again: the new key covers the new code."
            )
    return fs.join(target, fs.basename(module_file))


def _write_snapshot(target: str, contents: dict[str, bytes]) -> None:
    """Write files under `target`, then its completion marker. On a local
    disk they go to a private folder renamed into place, so two runs
    staging the same code never see each other's partial files; an object
    store has no rename, and concurrent writers put identical objects."""
    if fs.is_remote(target):
        for rel, data in contents.items():
            fs.write_bytes(fs.join(target, *rel.split("/")), data)
        fs.mark_complete(target)
        return
    import threading

    partial = f"{target}.{os.getpid()}.{threading.get_ident()}.partial"
    fs.rmtree(partial)
    for rel, data in contents.items():
        fs.write_bytes(fs.join(partial, *rel.split("/")), data)
    fs.mark_complete(partial)
    try:
        fs.rename(partial, target)
    except OSError:
        if not fs.is_complete(target):  # not another run's snapshot: a leftover
            fs.rmtree(target)
            fs.rename(partial, target)
    finally:
        fs.rmtree(partial)


_LOOPBACK = ("localhost", "127.0.0.1", "::1", "")


def _flag(args: Sequence[str], name: str) -> str | None:
    """The last value of `--name=value` or `--name value` in Beam flags."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            found = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            found = args[i + 1]
    return found


def _host(endpoint: str) -> str:
    return (urlparse(endpoint if "://" in endpoint else f"//{endpoint}").hostname or "").lower()


def remote_workers(beam_args: Sequence[str]) -> str | None:
    """Why the Beam workers these flags ask for cannot see this machine's
    files, or None when they can (the DirectRunner, or a portable runner
    whose job server and workers are on this machine)."""
    runner = (_flag(beam_args, "runner") or "DirectRunner").lower()
    if runner in ("directrunner", "direct", "interactiverunner"):
        return None
    if "dataflow" in runner:
        return f"the {_flag(beam_args, 'runner')} runs workers on other machines"
    environment = (_flag(beam_args, "environment_type") or "").upper()
    if environment == "DOCKER":
        return "workers run in Docker containers (--environment_type=DOCKER)"
    for name in ("job_endpoint", "flink_master", "spark_master_url", "environment_config"):
        value = _flag(beam_args, name)
        if value and name == "environment_config" and environment != "EXTERNAL":
            continue
        if value and not value.startswith(("[", "local")) and _host(value) not in _LOOPBACK:
            return f"--{name}={value} is on another machine"
    return None


def check_code_reaches_workers(components: Sequence[Component], root: str,
                               beam_args_of: Callable[[Component], Sequence[str]]) -> None:
    """Raise, before any node runs, when a Beam node's workers would run where
    this machine's files are not while the pipeline root is local: they
    could neither load the user code staged there nor read and write the
    artifacts. `beam_args_of(component)` gives a node's Beam flags."""
    if fs.is_remote(root):
        return
    remote: list[tuple[Component, str]] = []
    for component in components:
        why = remote_workers(beam_args_of(component)) if component.USES_BEAM else None
        if why is not None:
            remote.append((component, why))
    if not remote:
        return
    code = []
    for component, _ in remote:
        params = to_jsonable(component.params)
        code += [(component.id, params[n]) for n in component.CODE_PARAMS
                 if isinstance(params.get(n), str) and params[n].endswith(".py")]
    first, why = remote[0]
    what = (
        "; ".join(f"{node}: its module file {path} cannot reach the Beam workers" for node, path in code)
        if code else f"{first.id}: its Beam workers cannot read or write the pipeline's artifacts"
    )
    raise PipelineDefinitionError(
        f"{what}: {why}, and the pipeline root {root} is on this machine's disk. Put the pipeline root on "
        f"storage the workers read (s3://... or gs://...): Conveyor keeps the artifacts there, copies module "
        f"files and their local imports there, and the workers load them from it. Nothing was run."
    )


def invocation(
    component: Component,
    params: dict[str, Any],
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    *,
    pipeline_name: str,
    root: str,
    execution_id: int,
    beam_args: Sequence[str],
    code_file: str | None = None,
) -> Invocation:
    """The node's invocation; `code_file` is where its class is loaded
    from when it cannot be imported by name (`stage_class_file`; default:
    the class's own file)."""
    cls = type(component)
    source = _class_file(cls)
    code_file = code_file or source
    return Invocation(
        component_id=component.id,
        component_class=_class_path(cls),
        executor=_executor_path(component),
        parameters=params,
        inputs=artifacts_to_json(inputs),
        outputs=artifacts_to_json(outputs),
        beam_pipeline_args=list(beam_args) if component.USES_BEAM else [],
        pipeline_name=pipeline_name,
        pipeline_root=root,
        execution_id=execution_id,
        tmp_dir=scratch_dir(root, pipeline_name, component.id, execution_id, beam_args),
        code_file=code_file,
        code_origin=source if code_file != source else "",
    )


def scratch_dir(root: str, pipeline_name: str, component_id: str, execution_id: int,
                beam_args: Sequence[str]) -> str:
    """Where an execution keeps its temporary files (tf.Transform's, Beam's):
    under the pipeline root, which every runner's workers share; on this
    machine's disk when the root is on an object store but Beam's
    DirectRunner runs the work here, since many small temporary objects on a
    store cost far more than local files."""
    runner = (_flag(beam_args, "runner") or "DirectRunner").lower()
    if fs.is_remote(root) and runner in ("directrunner", "direct"):
        return _local_scratch(pipeline_name, component_id, execution_id)
    return _shared_scratch(root, component_id, execution_id)


def _local_scratch(pipeline_name: str, component_id: str, execution_id: int) -> str:
    return os.path.join(tempfile.gettempdir(), "conveyor-scratch", pipeline_name, component_id, str(execution_id))


def _shared_scratch(root: str, component_id: str, execution_id: int) -> str:
    return fs.join(root, component_id, ".temp", str(execution_id))


def discard_partial(pipeline: Any, component_id: str, execution_id: int, params: dict[str, Any]) -> None:
    """Remove what an execution that did not complete left behind: its
    output folders, its scratch folder (wherever `scratch_dir` put it) and
    its component's staging (a Pusher's half copy). `params` are the
    execution's parameters as JSON."""
    component = next((c for c in pipeline.components if c.id == component_id), None)
    if component is not None:
        outputs = [fs.join(pipeline.root, component_id, key, str(execution_id)) for key in component.outputs]
        outputs += component.staging_paths(params, execution_id)
    else:  # a node no longer in the pipeline: whatever folders it has
        outputs = fs.glob(fs.join(pipeline.root, component_id, "*", str(execution_id)))
    for path in (*outputs, _shared_scratch(pipeline.root, component_id, execution_id),
                 _local_scratch(pipeline.name, component_id, execution_id)):
        fs.rmtree(path)


def _class_file(cls: type) -> str:
    import inspect

    # A function component's class is made at run time: its function's file.
    try:
        return inspect.getsourcefile(getattr(cls, "function", None) or cls) or ""
    except TypeError:
        return ""


def beam_args_for(root: str, params: dict[str, Any], *arg_lists: Sequence[str]) -> list[str]:
    """A node's Beam flags: the object stores it touches first, then each
    list in order, so later ones (the component's own) win."""
    args = fs.beam_args([root, *_strings(params)])
    for more in arg_lists:
        args += list(more)
    runner = (_flag(args, "runner") or "").lower()
    if runner in ("portablerunner", "flinkrunner", "sparkrunner") and _flag(args, "job_server_timeout") is None:
        # Beam's portable client waits for a job's state at most this long
        # (60 s by default) and then gives up on a job that still runs.
        args.insert(0, "--job_server_timeout=86400")
    return args


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like parameter value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# -- owners: finding executions abandoned by a process or a machine that died ---


def _process_start(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc), so a pid
    the kernel reused is not taken for the process that died; '' elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2:].split()[19]


def owner() -> str:
    """This process, as recorded on the executions it runs (JSON)."""
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())})


def owner_alive(recorded: str | None) -> bool | None:
    """Whether the process that recorded `owner()` still runs: None when it
    ran on another host (it cannot be checked from here)."""
    if not recorded:
        return False  # written before owners were recorded: nothing runs it now
    try:
        data = json.loads(recorded)
        host, pid, start = data["host"], int(data["pid"]), str(data.get("start", ""))
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return None
    if not os.path.exists(f"/proc/{pid}") and not _pid_exists(pid):
        return False
    return not start or _process_start(pid) in ("", start)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_limit(stale_after: float | None = None) -> float:
    """How long (seconds) an execution owned on another host may go without
    a heartbeat before it counts as abandoned: `stale_after`, else
    $CONVEYOR_STALE_AFTER, else STALE_AFTER_SECONDS. At least two heartbeat
    periods, or live runs on other hosts would be taken for dead."""
    where = f"LocalRunner stale_after={stale_after!r}"
    if stale_after is None:
        raw = os.environ.get(STALE_AFTER_ENV, "").strip()
        if not raw:
            return STALE_AFTER_SECONDS
        where = f"{STALE_AFTER_ENV}={raw!r}"
        try:
            stale_after = float(raw)
        except ValueError:
            raise ValueError(f"{where} is not a number of seconds: set it to e.g. {STALE_AFTER_SECONDS:.0f}, "
                             f"or unset it for that default.") from None
    if not (isinstance(stale_after, (int, float)) and stale_after >= 2 * HEARTBEAT_SECONDS):
        raise ValueError(
            f"{where}: an execution owned on another host counts as abandoned after this many seconds "
            f"without a heartbeat, and runs send one every {HEARTBEAT_SECONDS:g} s; give at least "
            f"{2 * HEARTBEAT_SECONDS:g} (default {STALE_AFTER_SECONDS:g}), or live runs would be taken for dead."
        )
    return float(stale_after)


def abandoned(execution: Any, stale_after: float | None = None, now: float | None = None) -> str | None:
    """Why a RUNNING execution is abandoned, or None while its owner may
    still run it. An owner on this host is looked for (pid and start time);
    one on another host cannot be, so its heartbeat (`Heartbeat`; the
    execution's creation when it has none) tells: silent for longer than
    `stale_limit(stale_after)`, its machine or process is gone."""
    recorded = execution.custom_properties.get(mdstore.OWNER)
    who = recorded.string_value if recorded is not None else ""
    alive = owner_alive(who)
    if alive is False:
        return f"abandoned by a process that died ({who or 'owner not recorded'})"
    if alive:
        return None
    beat = execution.custom_properties.get(mdstore.HEARTBEAT)
    last = beat.double_value if beat is not None else execution.create_time_since_epoch / 1000
    silent = (time.time() if now is None else now) - last
    limit = stale_limit(stale_after)
    if silent <= limit:
        return None
    data = json.loads(who)
    return (f"abandoned: its owner on host {data.get('host')} (pid {data.get('pid')}) sent no heartbeat for "
            f"{silent:.0f} s (limit {limit:g} s: LocalRunner(stale_after=...) or ${STALE_AFTER_ENV})")


class Heartbeat:
    """Keeps this process's RUNNING executions visibly alive to runs on
    other hosts (which cannot look for this process, see `abandoned`):
    while started, a daemon thread sets HEARTBEAT to the time on the
    executions `add`ed and not yet `discard`ed, every `period` seconds
    (default HEARTBEAT_SECONDS). It writes through `Metadata`, whose lock
    serialises it with the scheduling thread's MLMD calls (MLMD's client is
    not thread-safe), and only to executions still RUNNING."""

    def __init__(self, md: Metadata, period: float | None = None) -> None:
        self._md = md
        self.period = HEARTBEAT_SECONDS if period is None else period
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure = ""  # the last beat's error, "" once one succeeds again

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="conveyor-heartbeat", daemon=True)
        self._thread.start()
        return self

    def add(self, execution_id: int) -> None:
        with self._lock:
            self._ids.add(execution_id)

    def discard(self, execution_id: int) -> None:
        with self._lock:
            self._ids.discard(execution_id)

    def beat(self) -> list[int]:
        """Refresh the heartbeats now; the ids of the executions refreshed."""
        with self._lock:
            ids = sorted(self._ids)
        return self._md.heartbeat(ids, time.time()) if ids else []

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.beat()
                self.failure = ""
            except Exception as e:  # noqa: BLE001 - a store that failed may answer the next beat; the run goes on
                self.failure = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(10.0, self.period))


def reconcile(md: Metadata, pipeline: Any, pipeline_context: Any, echo: Callable[[str], None],
              stale_after: float | None = None) -> list[int]:
    """Mark the pipeline's RUNNING executions that are `abandoned` FAILED
    (their process died, or their owner on another host sent no heartbeat
    for `stale_limit(stale_after)` s), with why, and remove what they left:
    their output folders, scratch folder and staging (e.g. a Pusher's half
    copy). Returns their ids. Executions of live processes (another run
    going on) and of other hosts still beating are left alone."""
    pb = mdstore._pb()
    limit = stale_limit(stale_after)
    now = time.time()
    found = []
    for e in md.executions(pipeline_context.id):
        if e.last_known_state != pb.Execution.RUNNING:
            continue
        why = abandoned(e, limit, now)
        if why is None:
            continue
        component_id = e.custom_properties[mdstore.COMPONENT_ID].string_value
        params = {k: _parsed(v) for k, v in md.properties_of(e).items()}
        discard_partial(pipeline, component_id, e.id, params)
        md.finish_execution(e.id, md.contexts_of(e.id), {}, state="FAILED", properties={mdstore.ERROR: why})
        # The owner's JSON stays in the recorded error; the console line is short.
        said = why if why.startswith("abandoned:") else "abandoned by a process that died"
        echo(f"  {component_id:<28} execution {e.id} was {said}: marked FAILED")
        found.append(e.id)
    return found


def _parsed(value: Any) -> Any:
    """A recorded parameter as JSON data (structured ones are stored as JSON text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# -- after the executor ---------------------------------------------------------------


def publish(md: Metadata, execution_id: int, contexts: Sequence[Any],
            result: InvocationResult) -> dict[str, list[Artifact]]:
    """Publish a successful result: each output's completion marker (its
    files are whole), then the artifacts in MLMD, LIVE, and the execution
    COMPLETE. Returns the published artifacts, with their MLMD ids."""
    outputs = result.output_artifacts()
    for arts in outputs.values():
        for a in arts:
            fs.mark_complete(a.uri)
    try:
        # Not over an execution another run ended meanwhile (took it for abandoned).
        md.finish_execution(execution_id, contexts, outputs, only_if_running=True)
    except ExecutionTakenOverError:
        remove_outputs(outputs)
        raise
    return outputs


def fail(md: Metadata, execution_id: int, contexts: Sequence[Any], message: str) -> None:
    """Record a failed execution with its error (what it wrote goes with
    `remove_outputs` or `discard_partial`)."""
    md.fail_execution(execution_id, contexts, message)


def remove_outputs(outputs: dict[str, list[Artifact]]) -> None:
    # A failed executor publishes nothing: its half-written files go too.
    for arts in outputs.values():
        for a in arts:
            fs.rmtree(a.uri)
