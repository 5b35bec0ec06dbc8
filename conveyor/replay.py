"""Replay: run one node of a recorded run again, here, on the inputs it had.

    from conveyor import replay

    r = replay.replay("root/metadata.sqlite", "latest", "trainer")
    r.scratch_dir, r.outputs, r.error       # pdb.post_mortem(r.error.__traceback__)

    conveyor replay [PIPELINE.py] RUN NODE [--store PATH_OR_URI] [--scratch DIR] [--set NAME=VALUE ...]

The node's execution in the run (the last one when it was retried) is read
from the store, which is opened read-only: its component class and executor
(`__component_class__`, `__executor__`, `__code_file__`, recorded by the
runner), its parameters (custom properties under their own names) and its
input artifacts (ids, URIs, properties as recorded). Fresh output artifacts
are allocated under a scratch directory (default: a new temporary one), and
the executor runs in this process, through `conveyor.launch.execute`, so a
breakpoint in the component's or the user's code stops on exactly the data
that made it fail. Nothing is published: no MLMD write, no file outside the
scratch directory (a Pusher pushes into `<scratch>/push_destination`).

What cannot be replayed is refused before anything runs: a secret parameter
(recorded masked: pass it with `overrides` / `--set`), a resolver (it has
no executor), an execution TFX recorded, input files that are gone.

Module files (`module_file=`) are run as they are now, so an edit (a print,
a `breakpoint()`) takes effect; when one changed since the run, a note says
so and names the snapshot of the code that ran (`<root>/_code/...`), which
`--set module_file=SNAPSHOT` replays instead. Beam components run on the
in-memory DirectRunner unless `beam_pipeline_args` say otherwise (the
run's own Beam flags are not recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import traceback
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import fs, lineage
from conveyor.artifacts import Artifact, artifact_type
from conveyor.errors import ConveyorError, closest
from conveyor.launch import Invocation, InvocationResult, artifacts_to_json, failure
from conveyor.lineage import LineageNotFoundError, Store, open_store
from conveyor.secrets import REDACTED, is_secret_name, redact

if TYPE_CHECKING:
    from conveyor.pipeline.dsl import Pipeline

__all__ = ["ReplayError", "ReplayResult", "replay", "add_replay_command", "parse_set"]

# Execution custom properties the runner records (conveyor.metadata.store),
# as strings so a store is read without importing the recorder.
_COMPONENT_ID = "__component_id__"
_COMPONENT_CLASS = "__component_class__"
_CODE_FILE = "__code_file__"
_CACHE_KEY_PARTS = "__cache_key_parts__"
_RESOLVER_TYPE = "tfx.dsl.components.common.resolver.Resolver"
# Where a replayed Pusher pushes, under the scratch directory.
_PUSH_DIR = "push_destination"


class ReplayError(ConveyorError):
    """A node that cannot be replayed as asked; the message says why and
    what to do. Nothing was run."""


@dataclasses.dataclass
class ReplayResult:
    """One replay: what was run (`invocation`, secrets as given), what the
    executor returned (`result`: its note, or its error as text), the output
    artifacts under `scratch_dir` (what the executor wrote, also when it
    failed), and the exception it raised (`error`, with its traceback)."""

    run_id: str
    node: str
    execution_id: int
    invocation: Invocation
    result: InvocationResult
    scratch_dir: str
    outputs: dict[str, list[Artifact]]
    error: BaseException | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.result.succeeded

    def to_json(self) -> dict[str, Any]:
        """The replay as JSON data, secrets masked."""
        return {
            "run_id": self.run_id, "node": self.node, "execution_id": self.execution_id,
            "component_class": self.invocation.component_class, "scratch_dir": self.scratch_dir,
            "succeeded": self.succeeded, "note": self.result.note, "error": self.result.error or None,
            "parameters": redact(self.invocation.parameters), "inputs": self.invocation.inputs,
            "outputs": artifacts_to_json(self.outputs), "notes": list(self.notes),
        }


def replay(
    store: Store | str,
    run_id: str,
    node: str,
    *,
    scratch_dir: str | None = None,
    pipeline: Pipeline | str | None = None,
    beam_pipeline_args: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = print,
) -> ReplayResult:
    """Run `node`'s executor of run `run_id` (an id, a unique prefix,
    `latest`, `previous`, `latest~N`) again in this process, on its recorded
    inputs, into `scratch_dir` (default: a new temporary directory). Returns
    the result; the executor's exception is in `.error`, not raised.

    `pipeline`: a pipeline name (keeps `latest` to its runs) or a Pipeline,
    whose component classes stand in for one the store did not record.
    `overrides`: parameter values to use instead of the recorded ones, by
    name; `"custom_config.db_password"` sets one key inside a dict
    parameter. Secret parameters, recorded masked, must be given here.
    `echo` is told where the scratch directory is (None: silent).

    Raises LineageNotFoundError when the store, run, node or an input's
    files are not there, ReplayError when the node cannot be replayed."""
    store = open_store(store)
    pipeline_name = pipeline if isinstance(pipeline, str) or pipeline is None else pipeline.name
    found = lineage.run(store, run_id, pipeline_name)
    node_run = found.node(node)
    [execution] = store.mlmd.get_executions_by_id([node_run.execution_id])
    where = f"node {node!r} of run {found.run_id} (execution {execution.id})"
    cls = _component_class(store, execution, node_run.type, node, where, pipeline)
    notes: list[str] = []
    inputs = _inputs(store, execution, node_run.inputs, where, notes)
    root = _pipeline_root(store, node_run, inputs)
    params = _parameters(store, execution, cls, where, dict(overrides or {}))

    scratch = fs.abspath(scratch_dir) if scratch_dir else tempfile.mkdtemp(prefix=f"conveyor-replay-{node}-")
    _redirect_pusher(cls, params, scratch, overrides or {}, notes)
    _check_code(store, execution, cls, params, root, notes)
    outputs = _outputs(cls, scratch, node, execution.id)
    beam_args: list[str] = []
    if getattr(cls, "USES_BEAM", False):
        from conveyor.pipeline.driver import beam_args_for

        beam_args = beam_args_for(root or scratch, params, list(beam_pipeline_args or []))
    code_file = store.value(execution, _CODE_FILE) or _class_file(cls)
    invocation = Invocation(
        component_id=node,
        component_class=f"{cls.__module__}:{cls.__qualname__}",
        executor=_executor_name(cls),
        parameters=params,
        inputs=artifacts_to_json(inputs),
        outputs=artifacts_to_json(outputs),
        beam_pipeline_args=beam_args,
        pipeline_name=found.pipeline or "adhoc",
        pipeline_root=root,
        execution_id=execution.id,
        tmp_dir=fs.join(scratch, ".temp"),
        code_file=code_file,
    )
    if echo is not None:
        echo(f"replaying {where} in this process; outputs under {scratch}")
        for note in notes:
            echo(f"  note: {note}")
    return _run(invocation, cls, found.run_id, node, scratch, outputs, notes)


def _run(invocation: Invocation, cls: type, run_id: str, node: str, scratch: str,
         outputs: dict[str, list[Artifact]], notes: list[str]) -> ReplayResult:
    from conveyor.launch import execute

    error: BaseException | None = None
    try:
        # The thread launcher's path: the executor runs in this thread, so breakpoints stop here.
        result = execute(invocation, cls)
    except Exception as e:  # noqa: BLE001 - handed to the caller with its traceback
        error, result = e, failure(node, e)
    replayed = result.output_artifacts() if result.succeeded else outputs
    return ReplayResult(run_id, node, invocation.execution_id, invocation, result, scratch, replayed, error, notes)


# -- the component class ---------------------------------------------------------


def _component_class(store: Store, execution: Any, type_name: str, node: str, where: str,
                     pipeline: Pipeline | str | None) -> type:
    """The class that ran: as the runner recorded it, else the pipeline's
    (when one was given), else the class the type name names."""
    from conveyor.pipeline.dsl import Component

    recorded = store.value(execution, _COMPONENT_CLASS)
    if not recorded and store.value(execution, _COMPONENT_ID) is None:
        tool = "TFX" if type_name.startswith("tfx.") else "another tool"
        raise ReplayError(
            f"{where} is not a Conveyor executor's execution: {tool} recorded it (type {type_name!r}). Replay "
            f"runs Conveyor's executors only: replay a node of a run Conveyor made, or run this one with {tool}."
        )
    if type_name == _RESOLVER_TYPE:
        raise _resolver_error(where)
    cls: Any = None
    if recorded:
        cls = _import_class(str(recorded), store.value(execution, _CODE_FILE) or "", where)
    elif pipeline is not None and not isinstance(pipeline, str):
        try:
            cls = type(pipeline.component(node))
        except KeyError:
            cls = None
    if cls is None:
        module, _, qualname = type_name.rpartition(".")
        cls = _try_import(module, qualname)
    if cls is None:
        raise ReplayError(
            f"{where} has no recorded component class (an older Conveyor recorded it; its type is "
            f"{type_name!r}): give the pipeline that ran it: `conveyor replay PIPELINE.py RUN NODE`, or "
            f"replay(..., pipeline=<the Pipeline>)."
        )
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise ReplayError(f"{where}: {cls!r} is not a Conveyor component class; replay runs Conveyor's executors only.")
    if cls.KIND == "resolver":
        raise _resolver_error(where)
    return cls


def _resolver_error(where: str) -> ReplayError:
    return ReplayError(
        f"{where} is a resolver: it picks artifacts from the store and has no executor to replay. Replay the "
        f"node that produced the artifacts it picked (`conveyor show RUN` lists them)."
    )


def _import_class(path: str, code_file: str, where: str) -> type:
    from conveyor.launch import component_class

    module, _, qualname = path.partition(":")
    code_file = code_file if code_file and os.path.isfile(code_file) else ""
    loaded = getattr(sys.modules.get(module), "__file__", None)
    if code_file and (module == "__main__" or (loaded and not _same_file(loaded, code_file))):
        # `__main__` is this process's script, and a pipeline file's module
        # name ("conveyor_pipeline") may be another file's here: the class's
        # own file is loaded under a name of its own.
        import hashlib

        digest = hashlib.sha256(os.path.abspath(code_file).encode()).hexdigest()[:12]
        module = f"conveyor_replay_{digest}"
    probe = Invocation(component_id="", component_class=f"{module}:{qualname}", executor="", parameters={},
                       inputs={}, outputs={}, code_file=code_file)
    try:
        return component_class(probe)
    except (ImportError, AttributeError) as e:
        raise ReplayError(
            f"{where}: cannot load its component class {path}"
            + (f" (from {code_file})" if code_file else "")
            + f": {type(e).__name__}: {e}. Make the module importable here (install it, or run from the folder "
              f"the pipeline ran from), or give the pipeline file first."
        ) from e


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _try_import(module: str, qualname: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError, ValueError):
        return None


def _class_file(cls: type) -> str:
    import inspect

    try:
        return inspect.getsourcefile(getattr(cls, "function", None) or cls) or ""
    except TypeError:
        return ""


def _executor_name(cls: type) -> str:
    executor = getattr(cls, "EXECUTOR", "")
    return executor if isinstance(executor, str) and executor else f"{cls.__module__}:{cls.__qualname__}.EXECUTOR"


# -- inputs and outputs -------------------------------------------------------------


def _inputs(store: Store, execution: Any, recorded: dict[str, list[int]], where: str,
            notes: list[str]) -> dict[str, list[Artifact]]:
    """The input artifacts as recorded: ids, URIs, properties and custom
    properties; a key that was wired but empty (in the cache key) as []."""
    ids = sorted({i for arts in recorded.values() for i in arts})
    protos = {p.id: p for p in store.mlmd.get_artifacts_by_id(ids)} if ids else {}
    inputs: dict[str, list[Artifact]] = {}
    for key, arts in recorded.items():
        inputs[key] = [_artifact(store, protos[i], key, where, notes) for i in arts if i in protos]
    parts = _json(store.value(execution, _CACHE_KEY_PARTS)) or {}
    for part in parts:
        if part.startswith("input:"):
            inputs.setdefault(part[len("input:"):], [])
    return inputs


def _artifact(store: Store, proto: Any, key: str, where: str, notes: list[str]) -> Artifact:
    type_name = store.artifact_type(proto.type_id)
    art = artifact_type(type_name)(proto.uri, id=proto.id)
    art.properties.update({k: store.python_value(v) for k, v in proto.properties.items()})
    art.custom_properties.update({k: store.python_value(v) for k, v in proto.custom_properties.items()})
    local, files = store.locate(proto.uri)
    if files == "unknown" and not fs.exists(proto.uri):
        local, files = None, "gone"
    if files == "gone":
        raise LineageNotFoundError(
            f"{where}: its input {key!r} (artifact {proto.id}, {type_name}) has no files at {proto.uri}, nor under "
            f"the store's folder: it was deleted or moved, so the node cannot be replayed on it. Copy the files "
            f"back to that URI (or to <store folder>/root/... as `conveyor show` looks for them)."
        )
    if local and local != proto.uri and not proto.uri.startswith("file://"):
        notes.append(f"input {key!r} (artifact {proto.id}): {proto.uri} is not here; its files at {local} are used")
        art.uri = local
    return art


def _outputs(cls: type, scratch: str, node: str, execution_id: int) -> dict[str, list[Artifact]]:
    """A fresh artifact per output key at `<scratch>/<node>/<key>/<execution id>`."""
    outputs = {}
    for key, out_type in cls.OUTPUTS.items():  # type: ignore[attr-defined]
        uri = fs.join(scratch, node, key, str(execution_id))
        if fs.exists(uri) and (not fs.isdir(uri) or fs.listdir(uri)):
            raise ReplayError(
                f"the scratch directory already holds {uri} (an earlier replay?): nothing is overwritten. Give "
                f"an empty or new scratch directory, or remove that one."
            )
        fs.makedirs(uri)
        outputs[key] = [out_type(uri)]
    return outputs


def _pipeline_root(store: Store, node_run: Any, inputs: dict[str, list[Artifact]]) -> str:
    """The run's pipeline root: above `<node>/<key>/<execution id>` of an
    output (or an input) artifact, else the store's folder."""
    ids = [i for arts in node_run.outputs.values() for i in arts]
    uris = [p.uri for p in store.mlmd.get_artifacts_by_id(ids)] if ids else []
    uris += [a.uri for arts in inputs.values() for a in arts]
    for uri in uris:
        if fs.basename(uri).isdigit():
            return fs.dirname(fs.dirname(fs.dirname(uri)))
    return store.folder or ""


# -- parameters -----------------------------------------------------------------


def _json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _decode(raw: Any, tp: Any) -> Any:
    """A parameter as the runner recorded it back as JSON data for its
    field's type: booleans were 0/1, structured values JSON text."""
    from conveyor.pipeline.dsl import type_problem

    if isinstance(raw, int) and not isinstance(raw, bool) and type_problem(raw, tp) and not type_problem(True, tp):
        return bool(raw)
    if isinstance(raw, str) and tp is not str:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        # A string field keeps "null" or "3"; anything else is what the JSON says.
        if type_problem(parsed, tp) is None or type_problem(raw, tp) is not None:
            return parsed
    return raw


def _parameters(store: Store, execution: Any, cls: type, where: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The Params fields as JSON data: overridden, else as recorded, else
    their defaults; refused while a secret is still masked."""
    from conveyor.pipeline.dsl import to_jsonable

    params_cls = cls.Params  # type: ignore[attr-defined]
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    recorded = store.values(execution)
    params: dict[str, Any] = {}
    for name, f in fields.items():
        if name in recorded:
            params[name] = _decode(recorded[name], hints.get(name, Any))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if name not in overrides:
                raise ReplayError(
                    f"{where} has no recorded value for its required parameter {name!r}: pass it "
                    f"(overrides={{{name!r}: VALUE}} in Python, --set {name}=VALUE on the command line)."
                )
    given = set()
    for path, value in overrides.items():
        head, *rest = path.split(".")
        if head not in fields:
            raise ReplayError(
                f"{where}: cannot set {path!r}: {cls.__name__} has no parameter {head!r}.{closest(head, fields)} "
                f"Its parameters are {sorted(fields) or 'none'}."
            )
        value = to_jsonable(value)
        if not rest:
            params[head] = value
        else:
            _set_nested(params, head, rest, value, path, where)
        given.add(path)
    masked = [p for p in _masked(params) if p not in given]
    if masked:
        sets = " ".join(f"--set {p}=VALUE" for p in masked)
        given_py = ", ".join(f"{p!r}: VALUE" for p in masked)
        raise ReplayError(
            f"{where}: parameter{'s' if len(masked) > 1 else ''} {', '.join(repr(p) for p in masked)} "
            f"{'were' if len(masked) > 1 else 'was'} recorded masked ({REDACTED!r}): secrets are never stored, "
            f"so the value that ran cannot be replayed from the store. Pass it: overrides={{{given_py}}} in "
            f"Python, {sets} on the command line."
        )
    return params


def _set_nested(params: dict[str, Any], head: str, rest: list[str], value: Any, path: str, where: str) -> None:
    target = params.get(head)
    for part in rest[:-1]:
        target = target.get(part) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        raise ReplayError(
            f"{where}: cannot set {path!r}: {'.'.join([head, *rest[:-1]])} is not a dict parameter here. "
            f"Set the whole parameter instead (--set {head}=JSON)."
        )
    target[rest[-1]] = value


def _masked(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the entries recorded masked (secret-looking names)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}{k}"
            if is_secret_name(str(k)) and v == REDACTED:
                found.append(path)
            else:
                found += _masked(v, path + ".")
    elif isinstance(value, list):
        for v in value:
            found += _masked(v, prefix)
    return found


def _redirect_pusher(cls: type, params: dict[str, Any], scratch: str, overrides: dict[str, Any],
                     notes: list[str]) -> None:
    """A Pusher pushes into the scratch directory, not to serving."""
    from conveyor.components.pusher import Pusher

    if not issubclass(cls, Pusher) or any(k.split(".")[0] in ("push_destination", "base_directory")
                                          for k in overrides):
        return
    target = fs.join(scratch, _PUSH_DIR)
    if isinstance(params.get("push_destination"), dict):
        params["push_destination"] = {"filesystem": {"base_directory": target}}
    else:
        params["base_directory"] = target
    notes.append(f"the push goes to {target}, not to the recorded destination (--set push_destination=... to change)")


def _check_code(store: Store, execution: Any, cls: type, params: dict[str, Any], root: str,
                notes: list[str]) -> None:
    """Module files run as they are now: say when one changed since the run
    and where the code that ran is; use that snapshot when the file is gone."""
    from conveyor.components.base import fingerprint_files

    parts = _json(store.value(execution, _CACHE_KEY_PARTS)) or {}
    for name in getattr(cls, "CODE_PARAMS", ()):
        path = params.get(name)
        if not (isinstance(path, str) and path.endswith(".py")):
            continue
        ran = parts.get(f"code:{fs.basename(path)}")
        if fs.isfile(path) and (ran is None or fingerprint_files([path]) == ran):
            continue
        snapshot = next((f for f in fs.glob(fs.join(root, "_code", "*", fs.basename(path)))
                         if ran is not None and fingerprint_files([f]) == ran), None) if root else None
        if not fs.isfile(path) and snapshot:
            notes.append(f"{name} {path} is gone: the snapshot of the code that ran is replayed ({snapshot})")
            params[name] = snapshot
        elif fs.isfile(path):
            where = f"; the code that ran is at {snapshot} (--set {name}={snapshot})" if snapshot else ""
            notes.append(f"{name} {path} changed since the run: the file as it is now is replayed{where}")


# -- the command ------------------------------------------------------------------


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set NAME=VALUE` flags as overrides: VALUE as JSON when it parses,
    else as the string it is."""
    found: dict[str, Any] = {}
    for item in items:
        name, eq, text = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--set expects NAME=VALUE (e.g. --set api_token=abc), got {item!r}")
        try:
            found[name.strip()] = json.loads(text)
        except ValueError:
            found[name.strip()] = text
    return found


def add_replay_command(sub: Any) -> argparse.ArgumentParser:
    """Register `replay` on the `conveyor` command's subparsers."""
    help_text = "run one node of a recorded run again in this process, on its recorded inputs; publishes nothing"
    parser = sub.add_parser("replay", help=help_text, description=help_text)
    from conveyor.cli import add_store_arguments  # here: conveyor.cli imports this module

    parser.add_argument("targets", nargs="*", metavar="ARG", help="[PIPELINE.py] RUN NODE")
    add_store_arguments(parser)
    parser.add_argument("--scratch", metavar="DIR", help="where the outputs go (default: a new temporary directory)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter value instead of the recorded one (JSON, else a string); needed for "
                             "secrets, which are recorded masked; NAME.KEY sets a key of a dict parameter")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                        help="a Beam pipeline flag (default: the in-memory DirectRunner)")
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser.set_defaults(func=_replay_command)
    return parser


def _replay_command(args: argparse.Namespace) -> int:
    """`conveyor replay`: 0 the executor succeeded, 1 it failed or nothing
    was found, 2 a usage error."""
    from conveyor.metadata.config import check_metadata

    targets = list(args.targets)
    pipeline: Any = args.pipeline
    spec = args.store
    try:
        overrides = parse_set(args.overrides)
        if targets and targets[0].endswith(".py"):
            from conveyor.cli import load_pipeline

            loaded = load_pipeline(targets.pop(0))
            spec = spec or loaded.metadata
            pipeline = loaded if not pipeline or pipeline == loaded.name else pipeline
        if len(targets) != 2:
            raise ValueError(f"expected RUN NODE, got {len(targets)} argument(s): {' '.join(targets) or '(none)'}")
        if not spec:
            raise ValueError(
                "which metadata store? Give --store PATH_OR_URI (a metadata.sqlite, its folder, or a mysql:// "
                "or postgresql:// URI) or the pipeline file first."
            )
        store = open_store(check_metadata(spec, "--store"))
        echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
        result = replay(store, targets[0], targets[1], scratch_dir=args.scratch, pipeline=pipeline,
                        beam_pipeline_args=args.beam_arg, overrides=overrides, echo=echo)
    except LineageNotFoundError as e:
        print(f"not found: {e}", file=sys.stderr)
        return 1
    except (ValueError, ConveyorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif result.succeeded:
        print(f"{result.node}: replayed OK{' - ' + result.result.note if result.result.note else ''}")
        for key, arts in sorted(result.outputs.items()):
            for a in arts:
                print(f"  {key}: {a.uri}")
    if not result.succeeded:
        print(f"{result.node}: the executor failed (outputs so far under {result.scratch_dir}):", file=sys.stderr)
        error = result.error
        text = ("".join(traceback.format_exception(type(error), error, error.__traceback__))
                if error is not None else result.result.error)
        print(text.rstrip(), file=sys.stderr)
        return 1
    return 0
