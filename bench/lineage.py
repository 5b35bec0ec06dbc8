"""Lineage queries on a store with many runs: conveyor.lineage against the
same question asked through MLMD's raw API, at 100 and at 1,000 runs.

    .venv/bin/python bench/lineage.py                    # 1,000 runs, measured at 100 and 1,000
    .venv/bin/python bench/lineage.py --runs 300 --at 100,300
    .venv/bin/python bench/lineage.py --keep             # keep the store (path printed)

Fills a SQLite store with runs of a small pipeline (gen -> stats -> train ->
push, function components) run by Conveyor's own LocalRunner, so the store
holds exactly what a real run records: cached executions re-linking outputs,
re-run reasons, pushed models. `n` changes every 100 runs (everything
re-runs), `steps` cycles through 1..4 (train and push re-run until each value
has been seen, then come from the cache).

At each checkpoint it times, fastest of --repeat tries, each on a freshly
opened store:

- runs:    the 20 newest runs with each node's state (conveyor.lineage.runs)
- lineage: the served model and its upstream graph (served_model + provenance)
- diff:    the previous run against the latest (diff)
- why:     why `train` of the latest run did or did not come from the cache (why)
- ui run:  the web UI's page of the latest run (its DAG and node table), rendered

and the same answers written with the raw MLMD API the plain way (types,
contexts, executions and events fetched per object; `get_*_by_type`,
`get_events_by_artifact_ids`, `get_executions_by_context` of the node). Both
answers are checked to agree. Targets: each conveyor.lineage query under
0.25 s at the largest N, and growing less than linearly with N (time at the
largest N / time at the smallest < N ratio / 2). Exit code 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import BENCH_DIR, load_average  # noqa: E402

from conveyor import LocalRunner, Pipeline, lineage  # noqa: E402
from conveyor.artifacts import Examples, ExampleStatistics, Model, PushedModel  # noqa: E402
from conveyor.components import InputArtifact, OutputArtifact, Parameter, component  # noqa: E402
from conveyor.ui.server import Site  # noqa: E402

TARGET_SECONDS = 0.25
LAST = 20  # runs listed by the `runs` query


@component
def gen(rows: OutputArtifact[Examples], n: Parameter[int] = 3) -> None:
    with open(os.path.join(rows.uri, "rows.txt"), "w") as f:
        f.write("row\n" * n)


@component
def stats(examples: InputArtifact[Examples], statistics: OutputArtifact[ExampleStatistics]) -> None:
    with open(os.path.join(examples.uri, "rows.txt")) as f, open(os.path.join(statistics.uri, "count"), "w") as out:
        out.write(str(len(f.readlines())))


@component
def train(examples: InputArtifact[Examples], statistics: InputArtifact[ExampleStatistics],
          model: OutputArtifact[Model], steps: Parameter[int] = 1) -> None:
    with open(os.path.join(model.uri, "model.txt"), "w") as f:
        f.write(str(steps))


@component
def push(model: InputArtifact[Model], pushed_model: OutputArtifact[PushedModel]) -> None:
    with open(os.path.join(pushed_model.uri, "model.txt"), "w") as f:
        f.write("pushed")
    pushed_model.set("pushed", 1)
    pushed_model.set("pushed_destination", os.path.join(pushed_model.uri, "serving"))


def _pipeline(root: str, i: int) -> Pipeline:
    g = gen(n=3 + i // 100)
    s = stats(examples=g.outputs["rows"])
    t = train(examples=g.outputs["rows"], statistics=s.outputs["statistics"], steps=1 + i % 4)
    return Pipeline("bench", root, [g, s, t, push(model=t.outputs["model"])])


def fill(root: str, start: int, stop: int) -> float:
    t0 = time.monotonic()
    runner = LocalRunner(echo=lambda _: None)
    for i in range(start, stop):
        result = runner.run(_pipeline(root, i), run_id=f"run{i:05d}", raise_on_failure=True)
        assert result.succeeded, result
    return time.monotonic() - t0


# ---------------------------------------------------------------------------
# The same questions through the raw MLMD API
# ---------------------------------------------------------------------------


def _raw_store(path: str) -> Any:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _raw_node(store: Any, e: Any) -> str:
    return next(c.name.split(".", 1)[1] for c in store.get_contexts_by_execution(e.id) if "." in c.name)


def raw_runs(path: str) -> list[tuple[str, list[tuple[str, int]]]]:
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = _raw_store(path)
    contexts = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id),
                      reverse=True)[:LAST]
    found = []
    for ctx in contexts:
        executions = sorted(store.get_executions_by_context(ctx.id), key=lambda e: (e.create_time_since_epoch, e.id))
        found.append((ctx.name, [(_raw_node(store, e), pb.Execution.State.Name(e.last_known_state))
                                 for e in executions]))
    return found


def raw_lineage(path: str) -> tuple[int, list[int], list[int]]:
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = _raw_store(path)
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if (a.custom_properties.get("pushed") or a.properties.get("pushed") or pb.Value()).int_value == 1]
    served = max(pushed, key=lambda a: a.id)
    artifacts, executions, todo = {served.id}, set(), [served.id]
    while todo:
        a = todo.pop()
        outputs = [ev.execution_id for ev in store.get_events_by_artifact_ids([a]) if ev.type == pb.Event.OUTPUT]
        if not outputs:
            continue
        producer = min(outputs)
        if producer in executions:
            continue
        store.get_executions_by_id([producer])
        executions.add(producer)
        inputs = [ev.artifact_id for ev in store.get_events_by_execution_ids([producer]) if ev.type == pb.Event.INPUT]
        for i in inputs:
            if i not in artifacts:
                store.get_artifacts_by_id([i])
                artifacts.add(i)
                todo.append(i)
    return served.id, sorted(artifacts), sorted(executions)


def raw_diff(path: str, run_a: str, run_b: str) -> dict[str, tuple[bool, bool]]:
    """Per node of run b: (did it run, did its cache-key parts change)."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = _raw_store(path)
    found = {}
    sides = []
    for name in (run_a, run_b):
        ctx = store.get_context_by_type_and_name("pipeline_run", name)
        sides.append({_raw_node(store, e): e for e in store.get_executions_by_context(ctx.id)})
    for node, b in sides[1].items():
        a = sides[0].get(node)
        parts_a = json.loads(a.custom_properties["__cache_key_parts__"].string_value) if a else {}
        parts_b = json.loads(b.custom_properties["__cache_key_parts__"].string_value)
        found[node] = (b.last_known_state != pb.Execution.CACHED, parts_a != parts_b)
    return found


def raw_why(path: str, run_id: str, node: str) -> tuple[int, bool]:
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = _raw_store(path)
    ctx = store.get_context_by_type_and_name("pipeline_run", run_id)
    [e] = [x for x in store.get_executions_by_context(ctx.id)
           if x.custom_properties["__component_id__"].string_value == node]
    node_ctx = store.get_context_by_type_and_name("node", f"bench.{node}")
    previous = sorted((x for x in store.get_executions_by_context(node_ctx.id)
                       if x.id < e.id and x.last_known_state == pb.Execution.COMPLETE), key=lambda x: x.id)
    if previous:
        json.loads(previous[-1].custom_properties["__cache_key_parts__"].string_value)
    return e.id, e.last_known_state == pb.Execution.CACHED


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def raw_run_page(path: str, run_id: str) -> list[str]:
    """What the UI's run page shows, raw: the run's executions, their node
    contexts and states, and their events (for the DAG's edges)."""
    store = _raw_store(path)
    ctx = store.get_context_by_type_and_name("pipeline_run", run_id)
    executions = store.get_executions_by_context(ctx.id)
    store.get_events_by_execution_ids([e.id for e in executions])
    return sorted({_raw_node(store, e) for e in executions})


def fastest(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, answer = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = fn()
        best = min(best, time.perf_counter() - t0)
    return best, answer


def measure(path: str, repeat: int) -> dict[str, tuple[float, float]]:
    """{query: (conveyor.lineage seconds, raw MLMD seconds)}, answers checked."""

    def ours_runs() -> Any:
        return lineage.runs(lineage.open_store(path), last=LAST)

    def ours_lineage() -> Any:
        store = lineage.open_store(path)
        return lineage.provenance(store, lineage.served_model(store))

    def ours_diff() -> Any:
        return lineage.diff(lineage.open_store(path), "previous", "latest")

    def ours_why() -> Any:
        return lineage.why(lineage.open_store(path), "latest", "train")

    figures = {}
    t, runs_ours = fastest(ours_runs, repeat)
    r, runs_raw = fastest(lambda: raw_runs(path), repeat)
    assert [(x.run_id, [(n.node, n.state) for n in x.nodes]) for x in runs_ours] == runs_raw
    figures["runs"] = (t, r)

    t, graph = fastest(ours_lineage, repeat)
    r, (served, arts, execs) = fastest(lambda: raw_lineage(path), repeat)
    assert (graph.root, sorted(graph.artifacts), sorted(graph.executions)) == (served, arts, execs)
    figures["lineage"] = (t, r)

    t, d = fastest(ours_diff, repeat)
    latest, previous = runs_ours[0].run_id, runs_ours[1].run_id
    r, reran = fastest(lambda: raw_diff(path, previous, latest), repeat)
    assert {n.node: (n.reran, bool(n.changes)) for n in d.nodes} == reran
    figures["diff"] = (t, r)

    def ours_run_page() -> Any:
        return Site(path).respond(f"/run/{_q(latest)}")

    t, (status, _, body) = fastest(ours_run_page, repeat)
    r, nodes = fastest(lambda: raw_run_page(path, latest), repeat)
    assert status == 200 and all(f'data-node="{n}"'.encode() in body for n in nodes)
    figures["ui run"] = (t, r)

    t, why = fastest(ours_why, repeat)
    r, (execution_id, cached) = fastest(lambda: raw_why(path, latest, "train"), repeat)
    assert (why.execution_id, why.cached) == (execution_id, cached)
    figures["why"] = (t, r)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in the store at the end (default 1000)")
    parser.add_argument("--at", default="100,1000", help="run counts to measure at (default 100,1000)")
    parser.add_argument("--repeat", type=int, default=15, help="tries per query; the fastest counts (default 15)")
    parser.add_argument("--dir", default=None, help=f"where the store goes (default: a new folder in {BENCH_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(x) for x in args.at.split(",") if x.strip()} | {args.runs})
    checkpoints = [c for c in checkpoints if c <= args.runs]
    os.makedirs(BENCH_DIR, exist_ok=True)
    base = args.dir or tempfile.mkdtemp(prefix="lineage-", dir=BENCH_DIR)
    root = os.path.join(base, "root")
    path = os.path.join(root, "metadata.sqlite")
    print(f"store {path}; load average {load_average()}")
    results: dict[int, dict[str, tuple[float, float]]] = {}
    done = 0
    try:
        for n in checkpoints:
            seconds = fill(root, done, n)
            print(f"filled runs {done}..{n - 1} in {seconds:.1f}s ({seconds / max(1, n - done) * 1000:.0f} ms a run)")
            done = n
            results[n] = measure(path, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    small, large = checkpoints[0], checkpoints[-1]
    print(f"\nload average {load_average()}; fastest of {args.repeat}, milliseconds")
    header = "".join(f"  {'N=' + str(n):>10} {'raw MLMD':>9}" for n in checkpoints)
    print(f"{'query':<9}{header}  growth")
    missed = []
    for query in ("runs", "lineage", "diff", "why", "ui run"):
        cells = "".join(f"  {results[n][query][0] * 1000:10.1f} {results[n][query][1] * 1000:9.1f}"
                        for n in checkpoints)
        growth = results[large][query][0] / results[small][query][0] if large != small else 1.0
        print(f"{query:<9}{cells}  x{growth:.2f}")
        if results[large][query][0] >= TARGET_SECONDS:
            missed.append(f"{query} took {results[large][query][0]:.3f}s at N={large} (target < {TARGET_SECONDS}s)")
        if large != small and growth >= (large / small) / 2:
            missed.append(f"{query} grew x{growth:.2f} from N={small} to N={large} (target < x{large / small / 2:g})")
    print(f"targets: each query < {TARGET_SECONDS}s at N={large}; growth < half of x{large / small:g}")
    for m in missed:
        print(f"MISSED: {m}")
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
