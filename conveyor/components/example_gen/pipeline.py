"""ExampleGen's Beam pipelines, one code path for every runner.

The driver plans work items (byte ranges of CSV files, row groups of
Parquet files, whole TFRecord files) and a reader for them; the pipeline
spreads the items over the workers (`Reshuffle`), each worker reads its item
into Arrow record batches, assigns their rows to the output splits
(`SplitPlan`) and hands batches of up to ROWS_PER_GROUP rows to Beam's file
sinks (`examples_io.beam_write_batches`). Only the items and the batches
move through Beam, never single rows.

A worker that finds bad input (InputProblem) or a reason to run again
(RetryNeeded) records it as a small JSON file under the work directory
(visible to the driver and every worker: it is inside the output) and stops
the pipeline; the driver reads what was recorded (`WorkerProblems`), so the
error reaches the user the same way whatever the runner makes of a failed
job. Results for the driver (row counts, what an analysis learned) come back
the same way, as files.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Iterator
from typing import Any

from conveyor import fs
from conveyor.components import examples_io
from conveyor.components.base import ExecutionContext
from conveyor.components.example_gen.hashing import SplitPlan
from conveyor.components.example_gen.inputs import InputProblem, RetryNeeded

__all__ = ["Problem", "WorkerProblems", "write_examples", "analyze"]

_PROBLEMS = "problems"
_RESULTS = "results"


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a worker recorded: `kind` "input" (bad input, `message` says
    what to do), "types" or "resplit" (see RetryNeeded), for the item at
    `order` (file number, part number) reading `path`."""

    kind: str
    message: str
    order: tuple[int, int]
    path: str


class WorkerProblems(Exception):
    """The problems workers recorded, earliest item first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]


def _record_problem(work_dir: str, item: Any, error: Exception) -> None:
    from apache_beam.io.filesystems import FileSystems

    if isinstance(error, RetryNeeded):
        kind, message = error.kind, error.detail
    else:
        kind, message = "input", str(error)
    order = list(item.order)
    record = {"kind": kind, "message": message, "order": order, "path": item.path}
    path = fs.join(work_dir, _PROBLEMS, f"{order[0]:08d}-{order[1]:08d}.json")
    with FileSystems.create(path) as f:
        f.write(json.dumps(record).encode())


def _read_and_split(
    item: Any, reader: Any, plan: SplitPlan, work_dir: str, rows_per_group: int
) -> Iterator[Any]:
    """Runs on a worker: the rows of one item, assigned to their splits, as
    tables of up to `rows_per_group` rows tagged with their split, and
    (split, rows) on the main output. Reading and splitting run on a thread
    of their own, a few tables ahead, so they overlap the writing of the
    tables before (decoding, hashing and Parquet encoding release the GIL)."""
    import apache_beam as beam

    try:
        for name, table in _read_ahead(_split_tables(item, reader, plan, rows_per_group)):
            yield beam.pvalue.TaggedOutput(name, table)
            yield (name, table.num_rows)
    except (InputProblem, RetryNeeded) as e:
        _record_problem(work_dir, item, e)
        raise


def _split_tables(item: Any, reader: Any, plan: SplitPlan, rows_per_group: int) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    pending: dict[str, list[Any]] = {name: [] for name in plan.names}
    pending_rows = dict.fromkeys(plan.names, 0)
    for batch in reader.batches(item):
        for name, part in plan.assign(batch, item.input_split):
            if part.num_rows == 0:
                continue
            pending[name].append(part)
            pending_rows[name] += part.num_rows
            if pending_rows[name] >= rows_per_group:
                yield name, pa.Table.from_batches(pending[name])
                pending[name], pending_rows[name] = [], 0
    for name in plan.names:
        if pending[name]:
            yield name, pa.Table.from_batches(pending[name])


def _read_ahead(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`batches`, produced on a thread of its own up to `depth` ahead. An
    error there is raised here; stopping early stops the thread."""
    import queue
    import threading

    ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - raised by the consumer
            put((end, e))
            return
        put((end, None))

    thread = threading.Thread(target=fill, name="example-gen-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is end:
                return
            yield batch
    finally:
        stop.set()
        thread.join()


def _analyze(item: Any, analyzer: Any, work_dir: str) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Runs on a worker: what `analyzer(item)` learns, pickled, by item order."""
    try:
        result = analyzer(item)
    except (InputProblem, RetryNeeded) as e:
        _record_problem(work_dir, item, e)
        raise
    yield (tuple(item.order), pickle.dumps(result))


def _save(values: list[Any], path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(pickle.dumps(sorted(values)))


def _prepare(work_dir: str) -> None:
    fs.rmtree(work_dir)
    for sub in (_PROBLEMS, _RESULTS):
        fs.makedirs(fs.join(work_dir, sub))


def _problems(work_dir: str) -> list[Problem]:
    directory = fs.join(work_dir, _PROBLEMS)
    found = []
    for name in fs.listdir(directory) if fs.exists(directory) else []:
        record = json.loads(fs.read_text(fs.join(directory, name)))
        found.append(Problem(record["kind"], record["message"], tuple(record["order"]), record["path"]))
    return sorted(found, key=lambda p: p.order)


def _run(ctx: ExecutionContext, build: Any, work_dir: str) -> None:
    """Build (with `build(pipeline)`) and run a pipeline; WorkerProblems if a
    worker recorded any, whatever the runner made of it."""
    pipeline = ctx.beam_pipeline()
    build(pipeline)
    try:
        pipeline.run().wait_until_finish()
    except Exception:
        problems = _problems(work_dir)
        if problems:
            raise WorkerProblems(problems) from None
        raise
    problems = _problems(work_dir)
    if problems:
        raise WorkerProblems(problems)


def write_examples(
    ctx: ExecutionContext,
    items: list[Any],
    reader: Any,
    plan: SplitPlan,
    schema: Any,
    split_dirs: dict[str, str],
    file_format: str,
    work_dir: str,
) -> dict[str, int]:
    """Read every item with `reader.batches(item)`, split the rows by `plan`
    and write each output split's files under `split_dirs[name]`; the rows
    of each split. Raises WorkerProblems."""
    _prepare(work_dir)
    counts_path = fs.join(work_dir, _RESULTS, "counts.pickle")

    def build(p: Any) -> None:
        import apache_beam as beam
        import pyarrow as pa

        parts = (
            p
            | "Plan" >> beam.Create(items)
            | "Distribute" >> beam.Reshuffle()
            | "ReadAndSplit" >> beam.FlatMap(
                _read_and_split, reader, plan, work_dir, examples_io.ROWS_PER_GROUP
            ).with_outputs(*plan.names, main="rows")
        )
        for name in plan.names:
            parts[name].element_type = pa.Table
            examples_io.beam_write_batches(parts[name], split_dirs[name], schema, file_format, label=f"Write[{name}]")
        _ = parts.rows | "AllCounts" >> beam.combiners.ToList() | "SaveCounts" >> beam.Map(_save, counts_path)

    _run(ctx, build, work_dir)
    counts = dict.fromkeys(plan.names, 0)
    for name, rows in pickle.loads(fs.read_bytes(counts_path)):
        counts[name] += rows
    return counts


def analyze(ctx: ExecutionContext, items: list[Any], analyzer: Any, work_dir: str) -> list[Any]:
    """`analyzer(item)` for every item, run on the workers; the results in
    the items' order. Raises WorkerProblems."""
    _prepare(work_dir)
    results_path = fs.join(work_dir, _RESULTS, "analysis.pickle")

    def build(p: Any) -> None:
        import apache_beam as beam

        _ = (
            p
            | "Plan" >> beam.Create(items)
            | "Distribute" >> beam.Reshuffle()
            | "Analyze" >> beam.FlatMap(_analyze, analyzer, work_dir)
            | "All" >> beam.combiners.ToList()
            | "Save" >> beam.Map(_save, results_path)
        )

    _run(ctx, build, work_dir)
    return [pickle.loads(result) for _, result in pickle.loads(fs.read_bytes(results_path))]
