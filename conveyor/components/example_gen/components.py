"""The ExampleGen components and their executors.

An executor resolves the input files, plans the work on the driver (reading
only headers, a first block, footers), runs the Beam pipelines
(`conveyor.components.example_gen.pipeline`) and publishes only on success:
on a local disk the splits are written under a staging directory inside the
output and renamed into place at the end; on an object store (no atomic
rename) they are written in place and removed again on failure. Either way,
bad input found late leaves the output empty.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact, Examples
from conveyor.components import examples_io
from conveyor.components.base import ExecutionContext
from conveyor.components.example_gen.config import Input, Output, check_configs
from conveyor.components.example_gen.hashing import SplitPlan
from conveyor.components.example_gen.inputs import (
    InputProblem,
    ResolvedInput,
    resolve_input,
    stat_digest,
    tfx_fingerprint,
)
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component

__all__ = [
    "CsvExampleGen",
    "CsvExampleGenParams",
    "ImportExampleGen",
    "ImportExampleGenParams",
    "run_csv",
    "run_import",
]


@dataclasses.dataclass(frozen=True)
class CsvExampleGenParams:
    input_base: str
    input_config: Input = Input()
    output_config: Output = Output()
    # "parquet" (fastest to decode) or "tfrecords_gzip" (tf.Example, for
    # tools that read TFX's format).
    output_file_format: str = "parquet"
    # The one ASCII character between fields: "," ";" "\t" "|" ... (quoting
    # stays RFC 4180's double quote).
    delimiter: str = ","


@dataclasses.dataclass(frozen=True)
class ImportExampleGenParams:
    input_base: str
    payload_format: str = "tfrecord"  # "tfrecord" (tf.Example, gzipped or not) or "parquet"
    input_config: Input = Input()
    output_config: Output = Output()
    output_file_format: str = "parquet"  # or "tfrecords_gzip", as CsvExampleGenParams


_PAYLOAD_FORMATS = ("tfrecord", "parquet")


class _ExampleGen(Component):
    OUTPUTS = {"examples": Examples}
    USES_BEAM = True

    def check(self) -> None:
        check_configs(self._where(), self.params.input_config, self.params.output_config)
        if not self.params.input_base:
            raise PipelineDefinitionError(f"{self._where()}: input_base must be a directory path.")
        examples_io.check_output_format(self._where(), self.params.output_file_format)

    def external_fingerprints(self) -> dict[str, str]:
        """Per input split, a sha256 over what the filesystem reports of the
        files it would read now (path relative to input_base, size,
        modification time, object checksum where the store gives one; see the
        package docstring), so new or changed data (or a new span) re-runs
        ExampleGen instead of reusing old output. No file is read."""
        try:
            resolved = resolve_input(self.params.input_base, self.params.input_config)
        except InputProblem:
            return {}  # The executor reports it, with what to do.
        base = fs.abspath(self.params.input_base)
        return {split: stat_digest(base, paths) for split, paths in resolved.files.items()}


class CsvExampleGen(_ExampleGen):
    """Reads CSV files (a header line, then one row a line, fields separated
    by `delimiter`, "," by default) under `input_base` into Examples. A header
    that looks written with another delimiter is an error naming it. Column
    types are inferred over the whole input as in TFX: int64 if every
    non-empty value is an integer, else double if every one is a number, else
    string; an empty field is a null."""

    Params = CsvExampleGenParams
    EXECUTOR = "conveyor.components.example_gen:run_csv"
    EXECUTOR_IMPORTS = ("apache_beam", "pyarrow.csv", "pyarrow.parquet")

    def check(self) -> None:
        super().check()
        d = self.params.delimiter
        # pyarrow takes one ASCII byte; a quote or line break would make every file unreadable.
        if len(d) != 1 or not d.isascii() or d in '"\r\n':
            raise PipelineDefinitionError(
                f"{self._where()}: delimiter {d!r} must be one ASCII character other than a double quote or "
                f"a line break, e.g. ',' (the default), ';', '\\t' or '|'."
            )


class ImportExampleGen(_ExampleGen):
    """Imports existing examples under `input_base`: TFRecord files of
    tf.Example (`payload_format="tfrecord"`, gzipped or not) or Parquet files
    (`payload_format="parquet"`). A feature with at most one value per row
    becomes a flat column; one with more stays a list column."""

    Params = ImportExampleGenParams
    EXECUTOR = "conveyor.components.example_gen:run_import"
    EXECUTOR_IMPORTS = ("apache_beam", "pyarrow.parquet")

    def check(self) -> None:
        super().check()
        if self.params.payload_format not in _PAYLOAD_FORMATS:
            raise PipelineDefinitionError(
                f"{self._where()}: payload_format {self.params.payload_format!r} is not one of "
                f"{list(_PAYLOAD_FORMATS)}."
            )


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


class _Output:
    """Where one run writes: the split directories (staged on a local disk,
    in place on an object store) and the pipelines' work directory."""

    def __init__(self, uri: str, names: list[str]) -> None:
        self.uri = uri
        self.remote = fs.is_remote(uri)
        staging = fs.join(uri, f".staging-{uuid.uuid4().hex[:12]}")
        self.staging = staging
        self.work_dir = fs.join(staging, ".work")
        root = uri if self.remote else staging
        self.split_dirs = {name: fs.join(root, f"Split-{name}") for name in names}

    def clear(self) -> None:
        """Remove what an attempt wrote."""
        for directory in self.split_dirs.values():
            fs.rmtree(directory)

    def publish(self) -> None:
        if not self.remote:
            for directory in self.split_dirs.values():
                fs.rename(directory, fs.join(self.uri, fs.basename(directory)))
        fs.rmtree(self.staging)

    def discard(self) -> None:
        if self.remote:
            self.clear()
        fs.rmtree(self.staging)


def _first_problem(error: Any) -> InputProblem:
    """The InputProblem to report of a pipeline's WorkerProblems: the
    earliest bad input, else the earliest problem."""
    problem = error.of_kind("input")[0] if error.of_kind("input") else error.problems[0]
    return InputProblem(problem.message)


def _write_csv(
    ctx: ExecutionContext, resolved: ResolvedInput, plan_split: SplitPlan, output: _Output, file_format: str,
    delimiter: str = ",",
) -> dict[str, int]:
    """Write with the types guessed from a sample; if a later value does not
    fit, learn every column's type from all its values and write again. A
    file whose byte ranges cut a quoted field is read whole."""
    from conveyor.components.example_gen import csv_input, pipeline

    plan = csv_input.plan_csv(resolved.files, delimiter)
    _check_partition_feature(plan_split, plan.names)
    kinds, exact, whole = plan.sample_kinds, False, set()
    while True:
        schema = plan.schema(kinds)
        reader = csv_input.CsvReader(tuple(plan.names), schema, exact, delimiter)
        try:
            return pipeline.write_examples(
                ctx, plan.ranges(whole), reader, plan_split, schema, output.split_dirs, file_format,
                output.work_dir,
            )
        except pipeline.WorkerProblems as e:
            output.clear()
            if {p.path for p in e.of_kind("resplit")} - whole:
                whole |= {p.path for p in e.of_kind("resplit")}
                continue
            if e.of_kind("input") or exact:
                raise _first_problem(e) from None
        exact = True
        kinds = _exact_kinds(ctx, plan, whole, output)


def _exact_kinds(ctx: ExecutionContext, plan: Any, whole: set[str], output: _Output) -> dict[str, str]:
    """Every column's kind from all its values, read as text on the workers."""
    from conveyor.components.example_gen import csv_input, pipeline

    reader = csv_input.CsvReader(tuple(plan.names), plan.schema(plan.sample_kinds), exact=True,
                                 delimiter=plan.delimiter)
    while True:
        try:
            parts = pipeline.analyze(ctx, plan.ranges(whole), reader.kinds, output.work_dir)
            return csv_input.merge_kinds(plan.names, parts)
        except pipeline.WorkerProblems as e:
            if {p.path for p in e.of_kind("resplit")} - whole and not e.of_kind("input"):
                whole |= {p.path for p in e.of_kind("resplit")}
                continue
            raise _first_problem(e) from None


def _check_partition_feature(plan_split: SplitPlan, names: list[str]) -> None:
    feature = plan_split.partition_feature
    if feature and feature not in names:
        raise InputProblem(
            f"partition_feature_name {feature!r} is not a column of the "
            f"input (columns: {names}). Name one of them."
        )


def _write_parquet(
    ctx: ExecutionContext, resolved: ResolvedInput, plan_split: SplitPlan, output: _Output, file_format: str
) -> dict[str, int]:
    from conveyor.components.example_gen import parquet_input, pipeline

    schema, parts = parquet_input.plan_parquet(resolved.files)
    _check_partition_feature(plan_split, schema.names)
    try:
        return pipeline.write_examples(
            ctx, parts, parquet_input.ParquetReader(schema), plan_split, schema, output.split_dirs, file_format,
            output.work_dir,
        )
    except pipeline.WorkerProblems as e:
        raise _first_problem(e) from None


def _write_tfrecord(
    ctx: ExecutionContext, resolved: ResolvedInput, plan_split: SplitPlan, output: _Output, file_format: str
) -> dict[str, int]:
    from conveyor.components.example_gen import pipeline, tfrecord_input

    files = [
        tfrecord_input.TfrecordFile(i, path, split)
        for i, (split, path) in enumerate((s, p) for s, paths in resolved.files.items() for p in paths)
    ]
    try:
        learned = pipeline.analyze(ctx, files, tfrecord_input.TfrecordReader().kinds, output.work_dir)
    except pipeline.WorkerProblems as e:
        raise _first_problem(e) from None
    kinds = tfrecord_input.FeatureKinds()
    for item, file_kinds in zip(files, learned, strict=True):
        kinds.merge(file_kinds, item.path)
    schema = kinds.schema()
    _check_partition_feature(plan_split, schema.names)
    try:
        return pipeline.write_examples(
            ctx, files, tfrecord_input.TfrecordReader(schema), plan_split, schema, output.split_dirs,
            file_format, output.work_dir,
        )
    except pipeline.WorkerProblems as e:
        raise _first_problem(e) from None


def _generate(
    outputs: dict[str, list[Artifact]],
    input_base: str,
    input_config: Input,
    output_config: Output,
    ctx: ExecutionContext,
    write: Any,
    file_format: str,
) -> None:
    out = outputs["examples"][0]
    plan_split = SplitPlan.of(input_config, output_config)
    output = _Output(out.uri, list(plan_split.names))
    try:
        resolved = resolve_input(input_base, input_config)
        counts = write(ctx, resolved, plan_split, output, file_format)
        output.publish()
    except InputProblem as e:
        output.discard()
        raise ctx.error(str(e)) from None
    except BaseException:
        output.discard()
        raise
    out.splits = list(plan_split.names)
    out.set("span", resolved.span)
    out.set("version", resolved.version or 0)
    out.custom_properties["file_format"] = file_format
    out.custom_properties["input_base"] = fs.abspath(input_base)
    out.custom_properties["input_fingerprint"] = tfx_fingerprint(resolved.files)
    out.custom_properties["input_files"] = json.dumps(dict(resolved.files))
    out.custom_properties["row_counts"] = json.dumps({name: counts[name] for name in plan_split.names})


def run_csv(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: CsvExampleGenParams,
    ctx: ExecutionContext,
) -> None:
    """CsvExampleGen's executor."""
    del inputs
    _generate(
        outputs, params.input_base, params.input_config, params.output_config, ctx,
        functools.partial(_write_csv, delimiter=params.delimiter), params.output_file_format,
    )


def run_import(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: ImportExampleGenParams,
    ctx: ExecutionContext,
) -> None:
    """ImportExampleGen's executor."""
    del inputs
    write = _write_tfrecord if params.payload_format == "tfrecord" else _write_parquet
    _generate(
        outputs, params.input_base, params.input_config, params.output_config, ctx, write,
        params.output_file_format,
    )
