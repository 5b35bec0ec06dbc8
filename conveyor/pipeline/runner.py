"""The local orchestrator: runs a pipeline's nodes in dependency order,
independent nodes at the same time, recording everything in MLMD.

MLMD is only touched from the scheduling thread (and the heartbeat's,
`driver.Heartbeat`, through `Metadata`'s lock). Around each node it uses
the reusable driver and publisher (`conveyor.pipeline.driver`: cache lookup,
output URIs, code staging, publishing); the executor itself runs from a
`conveyor.launch.Invocation`, in a worker thread or a child process, and sees
nothing but its artifacts, parameters and context.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from conveyor import forkserver, fs
from conveyor.artifacts import Artifact
from conveyor.errors import ExecutionTakenOverError, PipelineDefinitionError, RunFailedError
from conveyor.launch import NODE_ENV, Invocation, InvocationResult, describe_error, execute, failure
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import driver
from conveyor.pipeline.console import Capture, Console, LogFile, execution_log_path, now, quiet, run_log_path
from conveyor.pipeline.dsl import Component, Pipeline, to_jsonable

__all__ = ["LocalRunner", "RunResult", "NodeResult"]

# How often a node waiting for another run's identical execution looks again.
_WAIT_POLL_SECONDS = 0.5


@dataclasses.dataclass
class NodeResult:
    """What happened to one node in a run."""

    component_id: str
    state: str  # COMPLETE, CACHED, FAILED, SKIPPED (not run because upstream failed)
    execution_id: int | None = None
    seconds: float = 0.0
    outputs: dict[str, list[Artifact]] = dataclasses.field(default_factory=dict)
    rerun_reason: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    log_path: str | None = None  # the execution's log (a quiet run's nodes that ran)


@dataclasses.dataclass
class RunResult:
    pipeline_name: str
    run_id: str
    metadata_path: str
    nodes: dict[str, NodeResult]
    seconds: float

    @property
    def succeeded(self) -> bool:
        return all(n.state in ("COMPLETE", "CACHED") for n in self.nodes.values())

    def outputs(self, component_id: str, key: str) -> list[Artifact]:
        return self.nodes[component_id].outputs.get(key, [])


class LocalRunner:
    """Runs a Pipeline on this machine.

    `max_workers` bounds how many nodes run at once (default: 4).
    `enable_cache=False` re-runs every node (the CLI's --no-cache).
    `beam_pipeline_args` are appended to the pipeline's and precede each
    component's own, so the component's win.
    `launcher="fork"` (the default on Linux) runs each node's executor in a
    process of its own, forked from a server that imported the ML stack
    once (`conveyor.forkserver`): nodes share no TF state, modules or
    sys.path, a stopped run kills them with their process groups, and a
    node starts in milliseconds. `"process"` starts a fresh interpreter per
    node through `python -m conveyor.launch`, the contract any orchestrator
    can use (each imports TensorFlow itself; processes for the next nodes
    are started ahead, `_Launchers`). `"thread"` (the default where fork is
    not available) runs executors in threads of this process: no
    isolation, and a stopped run cannot stop them, only skip what cannot be
    undone.
    `run_from` names a node that runs again, with everything downstream of
    it, whatever the cache holds.

    A run is quiet unless `verbose=True`: the console shows Conveyor's own
    lines (to `echo` when given; else to stdout, with a live display of the
    running nodes when it is a terminal), and what TensorFlow, absl, Beam and
    Keras print goes to log files under `<root>/_logs/<run_id>/`, one per
    execution (its path recorded on the execution as `__log_path__`) and
    run.log (see `conveyor.pipeline.console`). Verbose runs leave the
    process's output alone and write no logs.

    A run first finds the pipeline's executions left RUNNING by a process
    that died (kill -9, a crash) and marks them FAILED, removing their
    partial outputs; then the nodes they belonged to run again. An owner on
    another host cannot be looked for: while a node runs, its execution's
    heartbeat is refreshed (`driver.Heartbeat`), and one whose owner elsewhere
    sent none for `stale_after` seconds (default: $CONVEYOR_STALE_AFTER, else
    600) counts as abandoned too.
    """

    LAUNCHERS = ("fork", "thread", "process")

    def __init__(
        self,
        *,
        max_workers: int = 4,
        enable_cache: bool = True,
        beam_pipeline_args: list[str] | None = None,
        echo: Callable[[str], None] | None = None,
        launcher: str | None = None,
        run_from: str | None = None,
        verbose: bool = False,
        stale_after: float | None = None,
    ) -> None:
        if launcher is None:
            launcher = "fork" if forkserver.available() else "thread"
        if launcher == "fork" and not forkserver.available():
            raise ValueError("LocalRunner launcher 'fork' needs Linux (fork and pidfd_open); use 'process'")
        if launcher not in self.LAUNCHERS:
            raise ValueError(f"LocalRunner launcher {launcher!r} is not one of {list(self.LAUNCHERS)}")
        self.launcher = launcher
        self.run_from = run_from
        self._owner = driver.owner()
        self.stale_after = driver.stale_limit(stale_after)
        self._heartbeat: driver.Heartbeat | None = None
        self._children = _Children()
        self._launchers: _Launchers | None = None
        self._forks: forkserver.ForkServer | None = None
        self._cancelled = threading.Event()
        self.max_workers = max_workers
        self.enable_cache = enable_cache
        self.beam_pipeline_args = list(beam_pipeline_args or [])
        self.echo = echo
        self.verbose = verbose
        self._console = Console(echo, None)
        self._capture: Capture | None = None
        self._logs: dict[int, LogFile] = {}
        self._run_id = ""
        self._ran_here = False

    def run(self, pipeline: Pipeline, *, run_id: str | None = None, raise_on_failure: bool = True) -> RunResult:
        start = time.monotonic()
        run_id = run_id or datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        self._check_loadable(pipeline)
        driver.check_code_reaches_workers(pipeline.components, pipeline.root,
                                          lambda c: self._beam_args(pipeline, c))
        fs.makedirs(pipeline.root)
        self._run_id, self._logs, self._ran_here = run_id, {}, False
        run_log = None if self.verbose else LogFile(
            run_log_path(pipeline.root, run_id),
            header=f"# conveyor: run {run_id} of pipeline {pipeline.name}, started {now()}\n# below: Conveyor's "
                   f"lines, and what the run's process wrote to its stdout and stderr that no execution's log took\n",
        )
        try:
            with quiet(run_log) if run_log is not None else contextlib.nullcontext() as capture:
                self._capture = capture
                self._console = Console(self.echo, capture, run_log, pipeline.name, len(pipeline.components))
                try:
                    run, failed = self._run(pipeline, run_id, start)
                    if self._ran_here:
                        # TF objects the executors left in reference cycles go now,
                        # while TensorFlow is whole: freed at interpreter exit, their
                        # __del__ (AtomicFunction's) can fail and print tracebacks.
                        gc.collect()
                finally:
                    for execution_id in list(self._logs):
                        self._close_log(execution_id)
                    self._console.close()
        finally:
            self._capture = None
            problem = run_log.close() if run_log is not None else None
            if problem:
                self._say(f"pipeline {pipeline.name}: {problem}")
        if failed is not None and raise_on_failure:
            where = f", log {failed.log_path}" if failed.log_path else ""
            raise RunFailedError(
                f"Pipeline {pipeline.name!r} run {run_id} failed at component {failed.component_id!r} "
                f"(execution {failed.execution_id}{where}): {failed.error}",
                component_id=failed.component_id,
                execution_id=failed.execution_id,
            )
        return run

    def _check_loadable(self, pipeline: Pipeline) -> None:
        """Before anything runs: a run inside a node's process (a pipeline
        file that runs its pipeline when a node's process imports it), or a
        component a node's process cannot load, is a definition error."""
        node = os.environ.get(NODE_ENV)
        if node:
            raise PipelineDefinitionError(
                f"pipeline {pipeline.name!r}: a run was started inside the process of node {node!r}, which "
                f"imported the file defining its component; that file starts a run when imported. Put the run "
                f'under `if __name__ == "__main__":`.'
            )
        if self.launcher == "thread":
            return
        for c in pipeline.components:
            cls = type(c)
            if "<locals>" in cls.__qualname__:
                raise PipelineDefinitionError(
                    f"component {c.id!r}: {cls.__module__}.{cls.__qualname__} is defined inside a function, so "
                    f"the node's own process (launcher {self.launcher!r}) cannot load it. Define it at the top "
                    f"level of a module or script, or run with LocalRunner(launcher=\"thread\") (--launcher thread)."
                )

    def _run(self, pipeline: Pipeline, run_id: str, start: float) -> tuple[RunResult, NodeResult | None]:
        forks = self._forks = forkserver.ForkServer(inherit_output=self.verbose) if self.launcher == "fork" else None
        if forks is not None and any(c.KIND != "resolver" for c in pipeline.components):
            # Now, from this thread (which lives as long as the run; see
            # die_with_parent): its imports (~2 s) overlap opening the store
            # and the first cache lookups. A run that launches nothing stops it.
            forks.start()
        try:
            return self._run_started(pipeline, run_id, start)
        except BaseException:
            if forks is not None:
                forks.stop()
            raise

    def _run_started(self, pipeline: Pipeline, run_id: str,
                     start: float) -> tuple[RunResult, NodeResult | None]:
        md = Metadata(pipeline.metadata)
        pipeline_ctx = md.context("pipeline", pipeline.name)
        run_ctx = md.context("pipeline_run", run_id, pipeline_name=pipeline.name)
        owner = run_ctx.properties["pipeline_name"].string_value if "pipeline_name" in run_ctx.properties else ""
        if owner != pipeline.name:
            # Run ids name contexts store-wide: two pipelines must not share one run.
            raise PipelineDefinitionError(
                f"run id {run_id!r} is already a run of pipeline {owner or '(unknown)'!r} in the store "
                f"{pipeline.metadata}; give this run of {pipeline.name!r} another run_id."
            )
        # A run stopped before refuses new processes and has its flag set; this one starts afresh.
        self._children, self._cancelled = _Children(), threading.Event()
        self._say(f"pipeline {pipeline.name}: run {run_id} ({len(pipeline.components)} components)")
        self._say(f"  root {pipeline.root}, metadata {pipeline.metadata}")
        driver.reconcile(md, pipeline, pipeline_ctx, self._say, stale_after=self.stale_after)
        forced = _downstream(pipeline, self.run_from) if self.run_from else set()

        results: dict[str, NodeResult] = {}
        produced: dict[tuple[str, str], list[Artifact]] = {}
        pending = list(pipeline.components)
        running: dict[futures.Future, tuple[Component, int, dict, list, float]] = {}
        failed: NodeResult | None = None
        waiting: set[str] = set()  # nodes another run is computing right now

        pool = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="conveyor")
        # Spares: enough for the nodes that may start together, few enough
        # that idle ones (~0.7 GB each) cost little memory.
        launchers = self._launchers = (_Launchers(self._children, spares=min(self.max_workers, 2),
                                                  inherit_output=self.verbose)
                                       if self.launcher == "process" else None)

        def expect() -> None:
            # How many more nodes may still need a launcher process: those not
            # yet handed to a worker thread (`queue` moves one to the queued).
            if launchers is not None:
                launchers.remaining = 0 if failed else sum(c.KIND != "resolver" for c in pending)

        heartbeat = self._heartbeat = driver.Heartbeat(md).start()
        ctrl_c = _CtrlC()
        try:
            while True:
                ctrl_c.check()
                expect()
                # Start every node whose upstream is done, unless something failed.
                # Cached and resolver nodes finish at once, which may ready more.
                progressed = False
                for component in [c for c in pending if failed is None and self._ready(c, results)]:
                    started = self._start(md, pipeline, component, pipeline_ctx, run_ctx, produced, pool,
                                          forced=component.id in forced, waiting=waiting)
                    if started is None:
                        continue  # waits for a concurrent run's identical execution; asked again below
                    pending.remove(component)
                    waiting.discard(component.id)
                    if isinstance(started, NodeResult):
                        progressed = True
                        results[component.id] = started
                        self._collect(component, started, produced)
                        if started.state == "FAILED":
                            failed = started
                    else:
                        running[started[0]] = started[1:]
                if progressed:
                    continue
                if not running and not waiting:
                    break
                if not running:
                    time.sleep(_WAIT_POLL_SECONDS)
                    continue
                done, _ = futures.wait(list(running), return_when=futures.FIRST_COMPLETED,
                                       timeout=_WAIT_POLL_SECONDS)
                for fut in done:
                    component, execution_id, io, contexts, t0 = running.pop(fut)
                    result = self._finish(md, component, execution_id, io, contexts, t0, fut)
                    results[component.id] = result
                    self._collect(component, result, produced)
                    if result.state == "FAILED" and failed is None:
                        failed = result
        except BaseException as e:
            # Interrupted (Ctrl-C, SIGTERM) or broken: launcher processes stop
            # (threads cannot be stopped), no execution is left RUNNING in
            # MLMD, and nothing half-written stays on disk.
            self._cancelled.set()  # executors in threads skip what cannot be undone
            self._children.stop_all()
            if launchers is not None:
                launchers.close()
            if self._forks is not None:
                self._forks.stop()
            by_id = {c.id: c for c in pipeline.components}
            for execution in md.executions(run_ctx.id):
                if execution.last_known_state != mdstore._pb().Execution.RUNNING:
                    continue
                component = by_id[execution.custom_properties[mdstore.COMPONENT_ID].string_value]
                driver.discard_partial(pipeline, component.id, execution.id, to_jsonable(component.params))
                md.finish_execution(
                    execution.id, [pipeline_ctx, run_ctx], {}, state="CANCELED",
                    properties={mdstore.ERROR: f"run stopped: {type(e).__name__}: {e}"},
                )
                self._close_log(execution.id, f"CANCELED: run stopped: {type(e).__name__}: {e}")
                self._say(f"  {component.id:<28} CANCELED")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            ctrl_c.restore()
            heartbeat.stop()
        if launchers is not None:
            launchers.close()
        if self._forks is not None:
            self._forks.close()
        pool.shutdown(wait=True)
        for component in pipeline.components:
            if component.id not in results:
                results[component.id] = NodeResult(component.id, "SKIPPED")
        seconds = time.monotonic() - start
        run = RunResult(pipeline.name, run_id, pipeline.metadata, results, seconds)
        self._summary(run)
        return run, failed

    def _say(self, line: str) -> None:
        self._console.say(line)

    def _open_log(self, md: Metadata, pipeline: Pipeline, component: Component, execution_id: int) -> LogFile | None:
        """The log of an execution about to run (none in a verbose run), its
        path recorded on the execution now, so a running or crashed one has it too."""
        if self.verbose:
            return None
        if self.launcher != "thread":
            what = "everything the node's process wrote to its stdout and stderr"
        else:
            what = (f"what the node's threads wrote through Python (print, logging, warnings, Keras);\n"
                    f"# output written straight to file descriptors (TensorFlow's C++ logs) is in "
                    f"{run_log_path(pipeline.root, self._run_id)}")
        log = LogFile(
            execution_log_path(pipeline.root, self._run_id, component.id, execution_id),
            header=f"# conveyor: {component.id}, execution {execution_id} of run {self._run_id} (pipeline "
                   f"{pipeline.name}, launcher {self.launcher}), started {now()}\n# below: {what}\n",
        )
        self._logs[execution_id] = log
        md.set_execution_properties(execution_id, {mdstore.LOG_PATH: log.path})
        return log

    def _close_log(self, execution_id: int, outcome: str = "") -> str | None:
        """End an execution's log with its outcome (copied to an object store
        now); its path, or None when it has none."""
        log = self._logs.pop(execution_id, None)
        if log is None:
            return None
        if outcome:
            log.write(f"\n# conveyor: {outcome}\n")
        problem = log.close()
        if problem:
            self._say(f"  execution {execution_id}: {problem}")
        return log.path

    # -- one node ------------------------------------------------------------------
    @staticmethod
    def _ready(component: Component, results: dict[str, NodeResult]) -> bool:
        return all(
            results.get(u.id) and results[u.id].state in ("COMPLETE", "CACHED") for u in component.upstream()
        )

    @staticmethod
    def _collect(component: Component, result: NodeResult, produced: dict) -> None:
        for key, arts in result.outputs.items():
            produced[(component.id, key)] = arts

    def _start(
        self,
        md: Metadata,
        pipeline: Pipeline,
        component: Component,
        pipeline_ctx: Any,
        run_ctx: Any,
        produced: dict,
        pool: futures.ThreadPoolExecutor,
        forced: bool = False,
        waiting: set[str] | None = None,
    ) -> NodeResult | tuple | None:
        t0 = time.monotonic()
        node_ctx = md.context("node", f"{pipeline.name}.{component.id}", pipeline_name=pipeline.name)
        contexts = [pipeline_ctx, run_ctx, node_ctx]
        inputs = {
            key: list(produced.get((ch.producer.id, ch.key), [])) if ch.producer else []
            for key, ch in component.inputs.items()
        }
        params = to_jsonable(component.params)
        properties = driver.execution_properties(component, params)
        properties[mdstore.OWNER] = self._owner
        type_name = driver.component_type_name(component)

        if component.KIND == "resolver":
            execution_id = md.start_execution(type_name, contexts, inputs, properties)
            try:
                outputs = component.resolve(md, inputs, pipeline_ctx)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - recorded as FAILED, then raised by run()
                return self._failed(md, component, execution_id, contexts, t0, describe_error(component.id, e))
            md.finish_execution(execution_id, contexts, outputs)
            result = NodeResult(component.id, "COMPLETE", execution_id, time.monotonic() - t0, outputs)
            chosen = ", ".join(f"{k}={[a.id for a in v]}" for k, v in outputs.items())
            self._console.ended(component.id)
            self._say(f"  {component.id:<28} resolved {chosen}")
            return result

        key, parts = driver.cache_key(component, inputs, params)
        properties[mdstore.CACHE_KEY] = key
        properties[mdstore.CACHE_KEY_PARTS] = json.dumps(parts, sort_keys=True) if parts else None
        use_cache = (self.enable_cache and pipeline.enable_cache and component.enable_cache and key
                     and not forced)
        previous = driver.previous_executions(md, node_ctx.id)
        if use_cache and waiting is not None:
            # A concurrent run of this pipeline computes the same thing now:
            # wait for it, then take its outputs from the cache.
            twin = driver.running_twin(md, node_ctx.id, key, self._owner, stale_after=self.stale_after)
            if twin is not None:
                if component.id not in waiting:
                    who = json.loads(twin.custom_properties[mdstore.OWNER].string_value)
                    self._say(f"  {component.id:<28} waiting: execution {twin.id} of another run (pid "
                              f"{who.get('pid')} on {who.get('host')}) computes the same outputs")
                    waiting.add(component.id)
                return None
        if use_cache:
            hit = driver.cache_hit(md, previous, key)
            if hit is not None:
                execution_id = md.start_execution(type_name, contexts, inputs, properties)
                md.finish_execution(execution_id, contexts, hit, state="CACHED")
                self._console.ended(component.id)
                self._say(f"  {component.id:<28} CACHED")
                return NodeResult(component.id, "CACHED", execution_id, time.monotonic() - t0, hit)
        reason = driver.rerun_reason(md, previous, key, parts)
        if forced and previous:
            reason = [f"re-run from {self.run_from!r} requested"]
        if reason:
            properties[mdstore.RERUN_REASON] = "; ".join(reason)

        execution_id = md.start_execution(type_name, contexts, inputs, properties)
        log = self._open_log(md, pipeline, component, execution_id)
        beam_args = self._beam_args(pipeline, component)
        try:
            outputs = driver.output_artifacts(pipeline.root, component, execution_id)
            staged = driver.stage_user_code(component, params, pipeline.root, hashed=parts)
            code_file = driver.stage_class_file(component, pipeline.root, hashed=parts)
        except Exception as e:  # noqa: BLE001 - recorded as FAILED, then raised by run()
            return self._failed(md, component, execution_id, contexts, t0, describe_error(component.id, e))
        invocation = driver.invocation(
            component, staged, inputs, outputs, pipeline_name=pipeline.name, root=pipeline.root,
            execution_id=execution_id, beam_args=beam_args, code_file=code_file,
        )
        if log is not None and self.launcher != "thread":
            invocation.log_file = log.local
        why = f" (re-run: {'; '.join(reason)})" if reason else ""
        self._console.running(component.id)
        self._say(f"  {component.id:<28} running{why}")
        if self._launchers is not None:
            self._launchers.queue()
        if self._forks is not None:
            self._forks.start()  # from this thread, which lives as long as the run (see die_with_parent)
        if self._heartbeat is not None:
            self._heartbeat.add(execution_id)
        fut = pool.submit(self._launch_with_retries, invocation, type(component), component, outputs, log)
        result = NodeResult(component.id, "RUNNING", execution_id, rerun_reason=reason,
                            log_path=log.path if log is not None else None)
        return fut, component, execution_id, {"outputs": outputs, "result": result}, contexts, t0

    def _launch(self, invocation: Invocation, cls: type, first: bool = True,
                log: LogFile | None = None) -> InvocationResult:
        """Run one node's invocation (in a worker thread): in this process,
        its Python output to `log`, or in a child process through
        `python -m conveyor.launch` (`first`: the node's first attempt)."""
        try:
            if self._forks is not None:
                return _launch_forked(invocation, self._forks, cls.EXECUTOR_IMPORTS)
            if self.launcher == "process":
                assert self._launchers is not None
                return _launch_in_child(invocation, self._launchers, self._children, queued=first)
            self._ran_here = True
            capture = self._capture
            with capture.node(log) if capture is not None and log is not None else contextlib.nullcontext():
                return execute(invocation, cls, self._cancelled)
        except Exception as e:  # noqa: BLE001 - the result carries every failure
            return failure(invocation.component_id, e)

    def _beam_args(self, pipeline: Pipeline, component: Component) -> list[str]:
        return driver.beam_args_for(
            pipeline.root, to_jsonable(component.params), pipeline.beam_pipeline_args, self.beam_pipeline_args,
            component.beam_pipeline_args,
        )

    def _launch_with_retries(self, invocation: Invocation, cls: type, component: Component,
                             outputs: dict[str, list[Artifact]],
                             log: LogFile | None = None) -> tuple[InvocationResult, list[str]]:
        """Launch, and launch again after a transient failure, as many times
        as the component's `retries` allow (waiting longer each time); the
        result and the errors of the attempts that failed."""
        errors: list[str] = []
        for attempt in range(component.retries + 1):
            result = self._launch(invocation, cls, first=attempt == 0, log=log)
            if result.succeeded or not result.transient or attempt == component.retries:
                return result, errors
            errors.append(result.error)
            wait = component.retry_backoff_seconds * 2 ** attempt
            if log is not None:
                log.write(f"\n# conveyor: attempt {attempt + 1} failed, retrying in {wait:.1f}s:\n{result.error}\n")
            self._say(f"  {component.id:<28} attempt {attempt + 1} failed ({result.error.splitlines()[0]}); "
                      f"retrying in {wait:.1f}s")
            driver.remove_outputs(outputs)
            for arts in outputs.values():
                fs.makedirs(arts[0].uri)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _finish(
        self, md: Metadata, component: Component, execution_id: int, io: dict, contexts: list, t0: float, fut: Any
    ) -> NodeResult:
        if self._heartbeat is not None:
            self._heartbeat.discard(execution_id)
        launched, retried = fut.result()
        if retried:
            md.set_execution_properties(execution_id, {
                mdstore.ATTEMPTS: len(retried) + 1, mdstore.RETRIED_ERRORS: json.dumps(retried),
            })
        if not launched.succeeded:
            driver.remove_outputs(io["outputs"])
            return self._failed(md, component, execution_id, contexts, t0, launched.error)
        try:
            outputs = driver.publish(md, execution_id, contexts, launched)
        except ExecutionTakenOverError as e:
            # The store already says how it ended: nothing more is written there.
            seconds = time.monotonic() - t0
            log_path = self._close_log(execution_id, f"FAILED after {seconds:.1f}s:\n{e}")
            self._console.ended(component.id)
            self._say(f"  {component.id:<28} FAILED after {seconds:.1f}s: {e}")
            return NodeResult(component.id, "FAILED", execution_id, seconds, error=str(e), log_path=log_path)
        seconds = time.monotonic() - t0
        note = launched.note
        self._close_log(execution_id, f"COMPLETE in {seconds:.1f}s{' - ' + note if note else ''}")
        self._console.ended(component.id)
        self._say(f"  {component.id:<28} COMPLETE in {seconds:.1f}s{' - ' + note if note else ''}")
        result: NodeResult = io["result"]
        result.state, result.seconds, result.outputs = "COMPLETE", seconds, outputs
        return result

    def _failed(
        self, md: Metadata, component: Component, execution_id: int, contexts: list, t0: float, message: str
    ) -> NodeResult:
        driver.fail(md, execution_id, contexts, message)
        seconds = time.monotonic() - t0
        log_path = self._close_log(execution_id, f"FAILED after {seconds:.1f}s:\n{message}")
        self._console.ended(component.id)
        self._say(f"  {component.id:<28} FAILED after {seconds:.1f}s: {message.splitlines()[0]}")
        if log_path:
            self._say(f"  {'':<28} log: {log_path}")
        return NodeResult(component.id, "FAILED", execution_id, seconds, error=message, log_path=log_path)

    def _summary(self, run: RunResult) -> None:
        counts: dict[str, int] = {}
        for n in run.nodes.values():
            counts[n.state] = counts.get(n.state, 0) + 1
        text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        self._say(f"pipeline {run.pipeline_name}: {text} in {run.seconds:.1f}s (metadata: {run.metadata_path})")


def _downstream(pipeline: Pipeline, node_id: str) -> set[str]:
    """A node and every node that depends on it."""
    pipeline.component(node_id)  # a KeyError naming the closest id when there is none
    found = {node_id}
    for c in pipeline.components:  # in dependency order
        if any(u.id in found for u in c.upstream()):
            found.add(c.id)
    return found


class _Children:
    """The launcher processes running now, each the leader of its own
    process group (Beam workers it starts join it), so a stopped run stops
    them all."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def start(self, argv: list[str], stdout: Any, stderr: Any) -> subprocess.Popen:
        """`argv` reading stdin from a pipe, writing to the files given;
        refused once `stop_all` ran, so no process outlives a stopped run."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the run was stopped")
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, text=True,
                start_new_session=True, preexec_fn=forkserver.die_with_parent(),
            )
            self._procs.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM to every group, SIGKILL to what is left after `grace` s."""
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        forkserver.stop_groups({p.pid: (lambda p=p: p.poll() is None) for p in procs}, grace)


@dataclasses.dataclass
class _Launcher:
    """One `python -m conveyor.launch --serve` process, waiting for its
    invocation on stdin, and its private scratch folder (the invocation, the
    result, the process's stdout and stderr: files, not pipes, so a process
    that waits long unread never blocks on a full pipe)."""

    proc: subprocess.Popen
    scratch: str


class _Launchers:
    """The launcher processes of one run (`launcher="process"`).

    Each node gets a process of its own that runs its one invocation and
    exits, so no TF state, module or sys.path entry passes between nodes.
    Most of a node's start is importing TensorFlow, TFDV, TFT, TFMA and Beam,
    so up to `spares` processes are started ahead with `--warm`: they import
    that stack (no user code) while earlier nodes run, then wait; a node
    takes one, and another is started while more nodes may need one
    (`remaining`, not yet started, kept by the scheduling thread; and those
    queued for a worker thread, `queue`). Nothing is started before
    a node actually runs, so a fully cached run starts no process. Spares
    left over are killed (and reaped) by `close`, at the end of the run or
    when it is stopped. A process writes to files in its scratch folder
    until its node's invocation points it at the node's log; with
    `inherit_output` (a verbose run) it writes where this process does."""

    def __init__(self, children: _Children, spares: int, inherit_output: bool = False) -> None:
        self._children = children
        self._spares = spares
        self._inherit_output = inherit_output
        self._ready: list[_Launcher] = []
        self._starting = 0
        self._queued = 0
        self._closed = False
        self._lock = threading.Lock()
        self.remaining = 0

    def queue(self) -> None:
        """A node was handed to the worker threads: it will `take(queued=True)`.
        It moves from `remaining` to the queued at once, so a spare being
        decided meanwhile counts it exactly once."""
        with self._lock:
            self._queued += 1
            self.remaining = max(0, self.remaining - 1)

    def take(self, queued: bool) -> _Launcher:
        """A process for a node (`queued`: its first attempt, announced by
        `queue`): a spare (warm, or warming up), else one started now
        without the warm-up (it imports only what its node needs); then
        spares are topped up."""
        with self._lock:
            if queued:
                self._queued = max(0, self._queued - 1)
            if self._closed:
                raise RuntimeError("the run was stopped")
            launcher = self._ready.pop(0) if self._ready else None
        launcher = launcher or self._start(warm=False)
        self._top_up()
        return launcher

    def _top_up(self) -> None:
        while True:
            with self._lock:
                wanted = min(self._spares, self.remaining + self._queued)
                if self._closed or len(self._ready) + self._starting >= wanted:
                    return
                self._starting += 1
            try:
                launcher = self._start(warm=True)
            except Exception:  # noqa: BLE001 - a spare is an optimisation: the next node starts its own
                return
            finally:
                with self._lock:
                    self._starting -= 1
            with self._lock:
                if not self._closed:
                    self._ready.append(launcher)
                    continue
            _discard(launcher, self._children)
            return

    def _start(self, warm: bool) -> _Launcher:
        scratch = tempfile.mkdtemp(prefix="conveyor-launch-")
        argv = [sys.executable, "-m", "conveyor.launch", "--serve", *(["--warm"] if warm else [])]
        try:
            if self._inherit_output:
                return _Launcher(self._children.start(argv, None, None), scratch)
            with open(os.path.join(scratch, "stdout"), "wb") as out, open(os.path.join(scratch, "stderr"), "wb") as err:
                return _Launcher(self._children.start(argv, out, err), scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def close(self) -> None:
        """Kill and reap the spares no node took; no new one starts."""
        with self._lock:
            self._closed = True
            spares, self._ready = self._ready, []
        for launcher in spares:
            _discard(launcher, self._children)


class _CtrlC:
    """Remembers a Ctrl-C (SIGINT) during a run, so that the run stops even
    when the KeyboardInterrupt it raised was swallowed: raised while the main
    thread ran a finalizer (`__del__`, a weakref callback), Python prints it
    as "Exception ignored" and carries on. The run's loop calls `check`
    every half second at most. Only where Python's own handler is installed
    (the main thread, no handler of the caller's)."""

    def __init__(self) -> None:
        self.seen = False
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self._installed:
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        signal.default_int_handler(signum, frame)

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False


def _discard(launcher: _Launcher, children: _Children) -> None:
    """Kill an unused launcher's process group, reap it, remove its folder."""
    try:
        os.killpg(launcher.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if launcher.proc.stdin:
        launcher.proc.stdin.close()
    launcher.proc.wait()
    children.done(launcher.proc)
    shutil.rmtree(launcher.scratch, ignore_errors=True)


def _launch_in_child(invocation: Invocation, launchers: _Launchers, children: _Children,
                     queued: bool) -> InvocationResult:
    """The invocation run by a `python -m conveyor.launch --serve` process."""
    launcher = launchers.take(queued)
    try:
        request = os.path.join(launcher.scratch, "invocation.json")
        answer = os.path.join(launcher.scratch, "result.json")
        forkserver.write_private(request, invocation.to_json())
        assert launcher.proc.stdin
        try:
            launcher.proc.stdin.write(json.dumps({"invocation": request, "result": answer}) + "\n")
            launcher.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died before reading (killed, a crash while importing): its exit code says so
        try:
            launcher.proc.wait()
        finally:
            children.done(launcher.proc)
        if os.path.exists(answer):
            with open(answer, encoding="utf-8") as f:
                return InvocationResult.from_json(f.read())
        # Before its invocation the process wrote to its scratch files, after it to the node's log.
        before = (forkserver.tail(os.path.join(launcher.scratch, "stderr"))
                  or forkserver.tail(os.path.join(launcher.scratch, "stdout")))
        tail = "\n".join(t for t in (before, forkserver.tail(invocation.log_file) if invocation.log_file else "") if t)
        return InvocationResult(
            error=f"{invocation.component_id}: the launcher process exited with code {launcher.proc.returncode} "
                  f"without a result:\n{tail}"
        )
    finally:
        shutil.rmtree(launcher.scratch, ignore_errors=True)


def _launch_forked(invocation: Invocation, forks: forkserver.ForkServer,
                   needs: tuple[str, ...] = ()) -> InvocationResult:
    """The invocation run by a child of the run's fork server, forked once
    the server has imported what the executor `needs`."""
    code, result, tail = forks.run(invocation.to_json(), invocation.log_file, needs)
    if result:
        return InvocationResult.from_json(result)
    how = "was lost with the fork server" if code is None else f"exited with code {code}"
    return InvocationResult(error=f"{invocation.component_id}: the node's process {how} without a result:\n{tail}")
