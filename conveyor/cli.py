"""The `conveyor` command.

    conveyor run PIPELINE.py [--no-cache] [--metadata PATH] [--launcher fork|thread|process] [-v] [BEAM FLAGS ...]
    conveyor compile PIPELINE.py

Asking the store questions (see conveyor.lineage); each takes the store as
`--store PATH_OR_URI` (a SQLite file or its folder, mysql://, postgresql://)
or a pipeline file first, prints text, or JSON with --json:

    conveyor runs [PIPELINE.py] [--last N]
    conveyor show [PIPELINE.py] RUN|ARTIFACT
    conveyor lineage [PIPELINE.py] [ARTIFACT|URI|SERVED_PATH] [--up|--down] [--format text|json|dot]
    conveyor diff [PIPELINE.py] RUN RUN
    conveyor why [PIPELINE.py] RUN NODE
    conveyor logs [PIPELINE.py] RUN NODE
    conveyor replay [PIPELINE.py] RUN NODE [--scratch DIR] [--set NAME=VALUE]

RUN is a run id, a unique prefix of one, `latest`, `previous` or `latest~N`;
ARTIFACT an artifact id. Exit codes: 0 answered, 1 not found (no store, run,
node, artifact or log), 2 usage error.

    conveyor ui [PIPELINE.py] [--store PATH_OR_URI] [--port 8080]
    conveyor report [PIPELINE.py] [RUN] -o report.html

`ui` serves a read-only site on 127.0.0.1 (runs, DAGs, artifacts,
lineage, diffs; see conveyor.ui.server); `report` writes one run as a
self-contained HTML file that opens offline.

    conveyor schema show SCHEMA.pbtxt
    conveyor schema diff A.pbtxt B.pbtxt

A pipeline file defines `pipeline` (a Pipeline) or `create_pipeline()`.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from conveyor import fs
from conveyor.errors import ConveyorError, PipelineDefinitionError
from conveyor.lineage import LineageNotFoundError
from conveyor.metadata.config import check_metadata
from conveyor.pipeline.dsl import Pipeline
from conveyor.replay import add_replay_command

__all__ = ["main", "entry", "load_pipeline", "add_store_arguments"]


def load_pipeline(path: str) -> Pipeline:
    """The Pipeline a file defines as `pipeline` or returns from `create_pipeline()`."""
    if not os.path.isfile(path):
        raise PipelineDefinitionError(f"pipeline file {path!r} does not exist.")
    path = os.path.abspath(path)
    sys.path.insert(0, os.path.dirname(path))
    try:
        namespace = runpy.run_path(path, run_name="conveyor_pipeline")
    finally:
        sys.path.remove(os.path.dirname(path))
    found = namespace.get("pipeline")
    if not isinstance(found, Pipeline) and callable(namespace.get("create_pipeline")):
        found = namespace["create_pipeline"]()
    if not isinstance(found, Pipeline):
        raise PipelineDefinitionError(
            f"{path} defines no pipeline: expected a module-level `pipeline = Pipeline(...)` "
            f"or a function `create_pipeline()` that returns one."
        )
    return found


def _pipeline(args: argparse.Namespace) -> Pipeline:
    """The pipeline named on the command line, with --metadata applied."""
    pipeline = load_pipeline(args.pipeline)
    if getattr(args, "metadata", None):
        pipeline.metadata = check_metadata(args.metadata, "--metadata")
    return pipeline


def _run(args: argparse.Namespace) -> int:
    from conveyor.pipeline.runner import LocalRunner

    pipeline = _pipeline(args)
    runner = LocalRunner(enable_cache=not args.no_cache, beam_pipeline_args=args.beam_arg, max_workers=args.workers,
                         launcher=args.launcher, run_from=args.run_from, verbose=args.verbose)
    if args.run_from:
        try:
            pipeline.component(args.run_from)  # an unknown node is an error before anything runs
        except KeyError as e:
            print(f"error: --from: {e.args[0]}", file=sys.stderr)
            return 2
    # SIGTERM stops a run as Ctrl-C does: running work is stopped and
    # recorded CANCELED. Set here, for the command, not on import.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = runner.run(pipeline, raise_on_failure=False)
    except KeyboardInterrupt:
        print("run stopped", file=sys.stderr)
        # Executors running in threads cannot be stopped from outside: ending
        # the process ends them, before they write anything more.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    failed = [n for n in result.nodes.values() if n.state == "FAILED"]
    for n in failed:
        log = f", log {n.log_path}" if n.log_path else ""
        print(f"\nFAILED {n.component_id} (execution {n.execution_id}{log}):\n{n.error}", file=sys.stderr)
    return 1 if failed else 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _compile(args: argparse.Namespace) -> int:
    from conveyor.pipeline.compiler import to_json

    print(to_json(load_pipeline(args.pipeline)))
    return 0


class _Usage(Exception):
    """A command line that does not say what to query (exit code 2)."""


def _query(args: argparse.Namespace, counts: Sequence[int], what: str) -> tuple[Any, str | None, list[str]]:
    """(the store, the pipeline name to keep to, the positional arguments)
    of a query command: the store from --store, or from the pipeline file
    given first (its name then scopes `latest` and the served model)."""
    from conveyor import lineage

    targets = list(args.targets)
    pipeline_name = args.pipeline
    spec = args.store
    if targets and targets[0].endswith(".py"):
        pipeline = load_pipeline(targets.pop(0))
        spec = spec or pipeline.metadata
        pipeline_name = pipeline_name or pipeline.name
    if len(targets) not in counts:
        raise _Usage(f"expected {what}, got {len(targets)} argument(s): {' '.join(targets) or '(none)'}")
    if not spec:
        raise _Usage(
            "which metadata store? Give --store PATH_OR_URI (a metadata.sqlite, its folder, or a mysql:// or "
            "postgresql:// URI) or the pipeline file first."
        )
    return lineage.open_store(check_metadata(spec, "--store")), pipeline_name, targets


def _print_json(obj: object) -> None:
    from conveyor import lineage

    print(lineage.to_json(obj))


def _answer(args: argparse.Namespace, found: object, text: Callable[[], str]) -> int:
    """Print a query's answer as JSON (--json) or as text; exit code 0."""
    if args.json:
        _print_json(found)
    else:
        print(text())
    return 0


def _runs(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, _ = _query(args, (0,), "no argument but the pipeline file")
    found = lineage.runs(store, pipeline, last=args.last)
    return _answer(args, found, lambda: lineage.format_runs(found, pipeline))


def _show(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, [target] = _query(args, (1,), "RUN or ARTIFACT")
    if not target.isdigit():  # a number is an artifact id; anything else a run first, then a URI
        try:
            found = lineage.run(store, target, pipeline)
        except LineageNotFoundError as not_a_run:
            try:
                return _show_artifact(store, target, args.json)
            except LineageNotFoundError:
                raise LineageNotFoundError(f"{target!r} is neither a run nor an artifact: {not_a_run}") from None
        if args.json:
            _print_json(found)
            return 0
        print(lineage.format_run(found))
        ids = sorted({a for n in found.nodes for ids in n.outputs.values() for a in ids})
        arts = {a.id: a for a in lineage.artifacts(store, ids)}
        for n in found.nodes:
            for key, out in sorted(n.outputs.items()):
                for a in out:
                    if a in arts:
                        print(f"    {n.node}.{key}: {lineage.format_artifact_line(arts[a])}")
        return 0
    return _show_artifact(store, target, args.json)


def _show_artifact(store: Any, target: str, as_json: bool) -> int:
    from conveyor import lineage

    art = lineage.artifact(store, target)
    producer = lineage.producer(store, art)
    used_by = lineage.consumers(store, art)
    if as_json:
        _print_json({"artifact": art, "producer": producer, "consumers": used_by})
    else:
        print(lineage.format_artifact(art, producer, used_by))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, targets = _query(args, (0, 1), "at most one ARTIFACT, URI or SERVED_PATH")
    if args.artifact is not None and targets:
        raise _Usage("give the artifact either as an argument or with --artifact, not both")
    if args.artifact is not None:
        target = lineage.artifact(store, args.artifact)
    elif targets:
        target = lineage.artifact(store, targets[0])
    else:
        target = lineage.served_model(store, pipeline=pipeline)
    graph = lineage.provenance(store, target, "down" if args.down else "up")
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _print_json(graph)
    elif fmt == "dot":
        print(lineage.provenance_dot(graph))
    else:
        print(lineage.format_provenance(graph))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, [run_a, run_b] = _query(args, (2,), "two runs: RUN_A RUN_B")
    found = lineage.diff(store, run_a, run_b, pipeline)
    return _answer(args, found, lambda: lineage.format_diff(found))


def _why(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, [run_id, node] = _query(args, (2,), "RUN NODE")
    found = lineage.why(store, run_id, node, pipeline)
    return _answer(args, found, lambda: lineage.format_why(found))


def _logs(args: argparse.Namespace) -> int:
    from conveyor import lineage

    store, pipeline, [run_id, node] = _query(args, (2,), "RUN NODE")
    found = lineage.logs(store, run_id, node, pipeline)
    if args.json:
        _print_json(found)
        return 0 if found.local_path else 1
    if found.local_path is None:
        print(found.message, file=sys.stderr)
        return 1
    try:
        text = fs.read_bytes(found.local_path).decode("utf-8", "replace")
    except OSError as e:
        print(f"log of {node} in run {found.run_id} (execution #{found.execution_id}): {found.path}: cannot be "
              f"read here ({e})", file=sys.stderr)
        return 1
    where = found.path if found.local_path == found.path else f"{found.local_path} (recorded at {found.path})"
    print(f"log of {node} in run {found.run_id} (execution #{found.execution_id}): {where}\n")
    sys.stdout.write(text)
    return 0


def _ui(args: argparse.Namespace) -> int:
    from conveyor.ui.server import serve

    store, _, _ = _query(args, (0,), "no argument but the pipeline file")

    def echo(line: str) -> None:
        print(line, flush=True)  # a script waits for this line to learn the port

    serve(store, args.port, echo=echo)
    return 0


def _report(args: argparse.Namespace) -> int:
    from conveyor.ui.report import write_report

    store, pipeline, targets = _query(args, (0, 1), "[RUN]")
    print(write_report(store, targets[0] if targets else "latest", args.output, pipeline=pipeline))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from conveyor.schema import cli as schema_cli

    if args.schema_command == "show":
        return schema_cli.show_main(args.path)
    return schema_cli.diff_main(args.a, args.b)


def _quiet_libraries() -> None:
    # TensorFlow's C++ start-up chatter and Google client deprecation notices
    # bury the run's own progress lines; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")


def _metadata_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata", metavar="PATH",
        help="the metadata store: a SQLite path or a mysql:// or postgresql:// URI (default: the pipeline's)",
    )


def _query_parser(sub: Any, name: str, func: Any, help_text: str, targets: str) -> argparse.ArgumentParser:
    """A query command: optional pipeline file, its own arguments, --store, --pipeline, --json."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "targets", nargs="*", metavar="ARG",
        help="[PIPELINE.py] " + targets if targets else "[PIPELINE.py]: read its metadata store, keep to its runs",
    )
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser.set_defaults(func=func)
    return parser


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--store and --pipeline, as every command that reads a store takes them."""
    parser.add_argument(
        "--store", "--metadata", dest="store", metavar="PATH_OR_URI",
        help="the metadata store: a SQLite file or the folder holding metadata.sqlite, or a mysql:// or "
             "postgresql:// URI (default: the pipeline file's)",
    )
    parser.add_argument("--pipeline", metavar="NAME", help="keep to the runs of this pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = argparse.ArgumentParser(prog="conveyor", description="TFX-style ML pipelines on Beam and MLMD")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline on this machine")
    run.add_argument("pipeline", help="a Python file defining `pipeline` or `create_pipeline()`")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--from", dest="run_from", metavar="NODE",
                     help="re-run NODE and everything downstream of it, ignoring their cache")
    run.add_argument(
        "--beam-arg", action="append", default=[], metavar="FLAG",
        help="a Beam pipeline flag for every Beam component, e.g. --beam-arg=--direct_num_workers=2",
    )
    run.add_argument("--workers", type=int, default=4, help="components run at the same time (default 4)")
    run.add_argument(
        "--launcher", choices=["fork", "thread", "process"], default=None,
        help="fork (default on Linux): each component in a process of its own, forked from a server that "
             "imported the ML stack once; process: a fresh python -m conveyor.launch per component; "
             "thread: in threads of this process (no isolation; a stopped run cannot stop them)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true",
        help="show what TensorFlow, absl, Beam and Keras print on the console; by default it goes to log files "
             "under <pipeline root>/_logs/<run id>/ (see `conveyor logs`)",
    )
    _metadata_flag(run)
    run.set_defaults(func=_run)

    comp = sub.add_parser("compile", help="print the pipeline's IR as JSON")
    comp.add_argument("pipeline")
    comp.set_defaults(func=_compile)

    runs = _query_parser(sub, "runs", _runs, "the last runs: each node's state, time, re-run reason, error", "")
    runs.add_argument("--last", type=int, default=5, help="how many runs, newest first (default 5)")

    _query_parser(sub, "show", _show, "a run (its nodes and outputs) or an artifact (producer, consumers)",
                  "RUN or ARTIFACT: a run id or shortcut, or an artifact id, URI or path")

    lin = _query_parser(sub, "lineage", _lineage, "what produced an artifact, or what was made from it "
                        "(default: the model being served)", "ARTIFACT: an artifact id, URI, copied path or a "
                        "served model's path (default: the latest pushed model)")
    lin.add_argument("--artifact", type=int, help="an MLMD artifact id")
    direction = lin.add_mutually_exclusive_group()
    direction.add_argument("--up", action="store_true", help="what it was made from, to the source files (default)")
    direction.add_argument("--down", action="store_true", help="what was made from it")
    lin.add_argument("--format", choices=["text", "json", "dot"], default="text",
                     help="text (default), json, or Graphviz dot")

    _query_parser(sub, "diff", _diff, "what changed between two runs: nodes re-run and why, parameters, code, "
                  "data, schema, metrics", "RUN_A RUN_B")
    _query_parser(sub, "why", _why, "why a node of a run came, or did not come, from the cache", "RUN NODE")
    _query_parser(sub, "logs", _logs, "the log recorded for a node of a run: its path, then its content",
                  "RUN NODE")
    add_replay_command(sub)

    ui = _query_parser(sub, "ui", _ui, "serve a read-only web UI of the store on 127.0.0.1", "")
    ui.add_argument("--port", type=int, default=8080, help="the port (default 8080; 0: any free port)")
    report = _query_parser(sub, "report", _report, "write one run as a self-contained HTML file",
                           "RUN (default: the latest run)")
    report.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")

    schema = sub.add_parser("schema", help="show or diff schema.pbtxt files")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    show = schema_sub.add_parser("show", help="print a schema as a table")
    show.add_argument("path")
    diff = schema_sub.add_parser("diff", help="what changed between two schemas (exit 1 if any)")
    diff.add_argument("a")
    diff.add_argument("b")
    schema.set_defaults(func=_schema)

    # Flags `run` does not know are Beam flags and pass through untouched:
    # conveyor run p.py --runner=FlinkRunner --flink_master=host:8081
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "run" or not all(u.startswith("--") for u in unknown):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.beam_arg = list(args.beam_arg) + unknown
    try:
        return args.func(args)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (`| head`) stopped reading: not an error of the query.
        sys.stdout = open(os.devnull, "w")  # so the flush at exit does not fail again
        return 0
    except LineageNotFoundError as e:
        print(f"not found: {e}", file=sys.stderr)
        return 1
    except ConveyorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script: main(), then exit with its code."""
    fs.exit_process(main())


if __name__ == "__main__":
    entry()
