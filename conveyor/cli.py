"""The `conveyor` command.

    conveyor run PIPELINE.py [--no-cache] [--metadata PATH] [--launcher thread|process] [BEAM FLAGS ...]
    conveyor compile PIPELINE.py
    conveyor lineage PIPELINE.py [--artifact ID]
    conveyor runs PIPELINE.py [--last N]
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
from collections.abc import Sequence

from conveyor import fs
from conveyor.errors import ConveyorError, PipelineDefinitionError
from conveyor.metadata.config import check_metadata, is_database_uri
from conveyor.pipeline.dsl import Pipeline

__all__ = ["main", "entry", "load_pipeline"]


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


def _no_store(pipeline: Pipeline) -> bool:
    """True (with a message) when the pipeline's SQLite store does not exist yet."""
    if is_database_uri(pipeline.metadata) or os.path.exists(pipeline.metadata):
        return False
    print(f"no metadata store at {pipeline.metadata}: run the pipeline first", file=sys.stderr)
    return True


def _run(args: argparse.Namespace) -> int:
    from conveyor.pipeline.runner import LocalRunner

    pipeline = _pipeline(args)
    runner = LocalRunner(enable_cache=not args.no_cache, beam_pipeline_args=args.beam_arg, max_workers=args.workers,
                         launcher=args.launcher, run_from=args.run_from)
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
        print(f"\nFAILED {n.component_id} (execution {n.execution_id}):\n{n.error}", file=sys.stderr)
    return 1 if failed else 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _compile(args: argparse.Namespace) -> int:
    from conveyor.pipeline.compiler import to_json

    print(to_json(load_pipeline(args.pipeline)))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from conveyor.artifacts import PushedModel
    from conveyor.metadata.lineage import format_lineage, upstream
    from conveyor.metadata.store import Metadata

    pipeline = _pipeline(args)
    if _no_store(pipeline):
        return 1
    md = Metadata(pipeline.metadata)
    if args.artifact is not None:
        artifact_id = args.artifact
    else:
        pushed = [a for a in md.artifacts_of_type(PushedModel) if a.get("pushed") == 1]
        if not pushed:
            print("no model has been pushed yet", file=sys.stderr)
            return 1
        artifact_id = max(a.id or 0 for a in pushed)
    print(format_lineage(upstream(md, artifact_id)))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from conveyor.metadata.lineage import run_history
    from conveyor.metadata.store import Metadata

    pipeline = _pipeline(args)
    if _no_store(pipeline):
        return 1
    print(run_history(Metadata(pipeline.metadata), pipeline.name, args.last))
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
        "--launcher", choices=["thread", "process"], default="thread",
        help="run each component in a thread of this process (default) or in a child process "
             "through python -m conveyor.launch",
    )
    _metadata_flag(run)
    run.set_defaults(func=_run)

    comp = sub.add_parser("compile", help="print the pipeline's IR as JSON")
    comp.add_argument("pipeline")
    comp.set_defaults(func=_compile)

    lin = sub.add_parser("lineage", help="what produced an artifact (default: the last pushed model)")
    lin.add_argument("pipeline")
    lin.add_argument("--artifact", type=int, help="an MLMD artifact id")
    _metadata_flag(lin)
    lin.set_defaults(func=_lineage)

    runs = sub.add_parser("runs", help="the last runs: each node's state, time, re-run reason, error")
    runs.add_argument("pipeline")
    runs.add_argument("--last", type=int, default=5, help="how many runs (default 5)")
    _metadata_flag(runs)
    runs.set_defaults(func=_runs)

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
    except ConveyorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script: main(), then exit with its code."""
    fs.exit_process(main())


if __name__ == "__main__":
    entry()
