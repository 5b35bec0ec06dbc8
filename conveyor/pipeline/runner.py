"""The local orchestrator: runs a pipeline's nodes in dependency order,
independent nodes at the same time, recording everything in MLMD.

MLMD is only touched from the scheduling thread; executors run in worker
threads and see nothing but their artifacts, parameters and context.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import datetime
import importlib
import json
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact
from conveyor.components.base import ExecutionContext
from conveyor.errors import ConveyorError, RunFailedError
from conveyor.metadata import store as mdstore
from conveyor.metadata.store import Metadata
from conveyor.pipeline import cache
from conveyor.pipeline.dsl import Component, Pipeline, to_jsonable

__all__ = ["LocalRunner", "RunResult", "NodeResult"]


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
    """

    def __init__(
        self,
        *,
        max_workers: int = 4,
        enable_cache: bool = True,
        beam_pipeline_args: list[str] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self.enable_cache = enable_cache
        self.beam_pipeline_args = list(beam_pipeline_args or [])
        self.echo = echo or _print

    def run(self, pipeline: Pipeline, *, run_id: str | None = None, raise_on_failure: bool = True) -> RunResult:
        start = time.monotonic()
        run_id = run_id or datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        fs.makedirs(pipeline.root)
        md = Metadata(pipeline.metadata)
        pipeline_ctx = md.context("pipeline", pipeline.name)
        run_ctx = md.context("pipeline_run", run_id, pipeline_name=pipeline.name)
        self.echo(f"pipeline {pipeline.name}: run {run_id} ({len(pipeline.components)} components)")
        self.echo(f"  root {pipeline.root}, metadata {pipeline.metadata}")

        results: dict[str, NodeResult] = {}
        produced: dict[tuple[str, str], list[Artifact]] = {}
        pending = list(pipeline.components)
        running: dict[futures.Future, tuple[Component, int, dict, list, float]] = {}
        failed: NodeResult | None = None

        pool = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="conveyor")
        try:
            while True:
                # Start every node whose upstream is done, unless something failed.
                # Cached and resolver nodes finish at once, which may ready more.
                progressed = False
                for component in [c for c in pending if failed is None and self._ready(c, results)]:
                    pending.remove(component)
                    started = self._start(md, pipeline, component, pipeline_ctx, run_ctx, produced, pool)
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
                if not running:
                    break
                done, _ = futures.wait(list(running), return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    component, execution_id, io, contexts, t0 = running.pop(fut)
                    result = self._finish(md, component, execution_id, io, contexts, t0, fut)
                    results[component.id] = result
                    self._collect(component, result, produced)
                    if result.state == "FAILED" and failed is None:
                        failed = result
        except BaseException as e:
            # Interrupted (Ctrl-C) or broken: no execution is left RUNNING in MLMD,
            # and nothing half-written stays on disk.
            by_id = {c.id: c for c in pipeline.components}
            for execution in md.executions(run_ctx.id):
                if execution.last_known_state != mdstore._pb().Execution.RUNNING:
                    continue
                component = by_id[execution.custom_properties[mdstore.COMPONENT_ID].string_value]
                for key in component.outputs:
                    fs.rmtree(fs.join(pipeline.root, component.id, key, str(execution.id)))
                md.finish_execution(
                    execution.id, [pipeline_ctx, run_ctx], {}, state="CANCELED",
                    properties={mdstore.ERROR: f"run stopped: {type(e).__name__}: {e}"},
                )
                self.echo(f"  {component.id:<28} CANCELED")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for component in pipeline.components:
            if component.id not in results:
                results[component.id] = NodeResult(component.id, "SKIPPED")
        seconds = time.monotonic() - start
        run = RunResult(pipeline.name, run_id, pipeline.metadata, results, seconds)
        self._summary(run)
        if failed is not None and raise_on_failure:
            raise RunFailedError(
                f"Pipeline {pipeline.name!r} run {run_id} failed at component {failed.component_id!r} "
                f"(execution {failed.execution_id}): {failed.error}",
                component_id=failed.component_id,
                execution_id=failed.execution_id,
            )
        return run

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
    ) -> NodeResult | tuple:
        t0 = time.monotonic()
        node_ctx = md.context("node", f"{pipeline.name}.{component.id}", pipeline_name=pipeline.name)
        contexts = [pipeline_ctx, run_ctx, node_ctx]
        inputs = {
            key: list(produced.get((ch.producer.id, ch.key), [])) if ch.producer else []
            for key, ch in component.inputs.items()
        }
        params = to_jsonable(component.params)
        properties = {name: _mlmd_value(v) for name, v in params.items()}
        properties[mdstore.COMPONENT_ID] = component.id
        type_name = f"{type(component).__module__}.{type(component).__qualname__}"

        if component.KIND == "resolver":
            execution_id = md.start_execution(type_name, contexts, inputs, properties)
            try:
                outputs = component.resolve(md, inputs, pipeline_ctx)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - recorded as FAILED, then raised by run()
                return self._failed(md, component, execution_id, contexts, t0, e)
            md.finish_execution(execution_id, contexts, outputs)
            result = NodeResult(component.id, "COMPLETE", execution_id, time.monotonic() - t0, outputs)
            chosen = ", ".join(f"{k}={[a.id for a in v]}" for k, v in outputs.items())
            self.echo(f"  {component.id:<28} resolved {chosen}")
            return result

        parts = cache.cache_key_parts(component, inputs, params)
        key = cache.digest(parts) if parts is not None else None
        properties[mdstore.CACHE_KEY] = key
        properties[mdstore.CACHE_KEY_PARTS] = json.dumps(parts, sort_keys=True) if parts else None
        use_cache = self.enable_cache and pipeline.enable_cache and component.enable_cache and key
        previous = _previous_executions(md, node_ctx.id)
        if use_cache:
            hit = _cache_hit(md, previous, key)
            if hit is not None:
                execution_id = md.start_execution(type_name, contexts, inputs, properties)
                md.finish_execution(execution_id, contexts, hit, state="CACHED")
                self.echo(f"  {component.id:<28} CACHED")
                return NodeResult(component.id, "CACHED", execution_id, time.monotonic() - t0, hit)
        reason = _rerun_reason(md, previous, key, parts)
        if reason:
            properties[mdstore.RERUN_REASON] = "; ".join(reason)

        execution_id = md.start_execution(type_name, contexts, inputs, properties)
        outputs = {
            out_key: [ch.type(fs.join(pipeline.root, component.id, out_key, str(execution_id)))]
            for out_key, ch in component.outputs.items()
        }
        for arts in outputs.values():
            fs.makedirs(arts[0].uri)
        # The object stores the node touches get their endpoint flags first,
        # so the user's own flags still win.
        touched = [pipeline.root, *_strings(params)]
        beam_args = (fs.beam_args(touched) + pipeline.beam_pipeline_args + self.beam_pipeline_args
                     + component.beam_pipeline_args)
        tmp_dir = fs.join(pipeline.root, component.id, ".temp", str(execution_id))
        ctx = ExecutionContext(
            component_id=component.id,
            pipeline_name=pipeline.name,
            pipeline_root=pipeline.root,
            execution_id=execution_id,
            beam_pipeline_args=beam_args if component.USES_BEAM else [],
            tmp_dir=tmp_dir,
        )
        why = f" (re-run: {'; '.join(reason)})" if reason else ""
        self.echo(f"  {component.id:<28} running{why}")
        fut = pool.submit(_execute, component, inputs, outputs, ctx)
        result = NodeResult(component.id, "RUNNING", execution_id, rerun_reason=reason)
        return fut, component, execution_id, {"inputs": inputs, "outputs": outputs, "result": result}, contexts, t0

    def _finish(
        self, md: Metadata, component: Component, execution_id: int, io: dict, contexts: list, t0: float, fut: Any
    ) -> NodeResult:
        outputs = io["outputs"]
        error = fut.exception()
        if error is not None:
            _remove_outputs(outputs)
            return self._failed(md, component, execution_id, contexts, t0, error)
        for arts in outputs.values():
            for a in arts:
                fs.mark_complete(a.uri)  # the files are whole: readers may trust them
        md.finish_execution(execution_id, contexts, outputs)
        seconds = time.monotonic() - t0
        note = fut.result() or ""
        self.echo(f"  {component.id:<28} COMPLETE in {seconds:.1f}s{' - ' + note if note else ''}")
        result: NodeResult = io["result"]
        result.state, result.seconds, result.outputs = "COMPLETE", seconds, outputs
        return result

    def _failed(
        self, md: Metadata, component: Component, execution_id: int, contexts: list, t0: float, error: BaseException
    ) -> NodeResult:
        if isinstance(error, ConveyorError):
            message = str(error)
        else:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:])
            message = f"{component.id}: {type(error).__name__}: {error}\n{tb}"
        md.fail_execution(execution_id, contexts, message)
        seconds = time.monotonic() - t0
        self.echo(f"  {component.id:<28} FAILED after {seconds:.1f}s: {message.splitlines()[0]}")
        return NodeResult(component.id, "FAILED", execution_id, seconds, error=message)

    def _summary(self, run: RunResult) -> None:
        counts: dict[str, int] = {}
        for n in run.nodes.values():
            counts[n.state] = counts.get(n.state, 0) + 1
        text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        self.echo(f"pipeline {run.pipeline_name}: {text} in {run.seconds:.1f}s (metadata: {run.metadata_path})")


def _print(line: str) -> None:
    print(line, flush=True)


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


def _mlmd_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else json.dumps(value)


def _load_executor(component: Component) -> Callable[..., Any]:
    executor = component.EXECUTOR
    if callable(executor):
        return executor
    module_name, _, attr = executor.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _execute(component: Component, inputs: dict, outputs: dict, ctx: ExecutionContext) -> Any:
    fs.makedirs(ctx.tmp_dir)
    try:
        fn = _load_executor(component)
        return fn(inputs, outputs, component.params, ctx)
    finally:
        fs.rmtree(ctx.tmp_dir)


def _remove_outputs(outputs: dict[str, list[Artifact]]) -> None:
    # A failed executor publishes nothing: its half-written files go too.
    for arts in outputs.values():
        for a in arts:
            fs.rmtree(a.uri)


def _previous_executions(md: Metadata, node_context_id: int) -> list[Any]:
    pb = mdstore._pb()
    done = [e for e in md.executions(node_context_id) if e.last_known_state == pb.Execution.COMPLETE]
    return sorted(done, key=lambda e: e.id, reverse=True)


def _cache_hit(md: Metadata, previous: list[Any], key: str) -> dict[str, list[Artifact]] | None:
    for e in previous:
        prop = e.custom_properties.get(mdstore.CACHE_KEY)
        if prop is None or prop.string_value != key:
            continue
        outputs = md.io_of(e.id, "OUTPUT")
        if all(fs.is_complete(a.uri) for arts in outputs.values() for a in arts):
            return outputs
    return None


def _rerun_reason(md: Metadata, previous: list[Any], key: str | None, parts: dict | None) -> list[str]:
    """Why this node runs although it ran before: the changed parts of the key."""
    if not previous:
        return []
    last = previous[0]
    old_raw = last.custom_properties.get(mdstore.CACHE_KEY_PARTS)
    if old_raw is None or not old_raw.string_value or parts is None:
        return []
    old = json.loads(old_raw.string_value)
    if old == parts:
        return ["cache disabled or earlier outputs missing"]
    return cache.explain_change(old, parts)
