"""Parquet import: the schema from the files' footers (on the driver) and
work items of whole row groups, read on the workers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from conveyor import fs
from conveyor.components.example_gen.inputs import InputProblem, open_on_worker

__all__ = ["ParquetPart", "ParquetReader", "plan_parquet", "parquet_type", "unify", "conform", "ROWS_PER_PART"]

_PARQUET_BATCH = 65536
# Rows per work item: whole row groups, about this many.
ROWS_PER_PART = 1_000_000


def parquet_type(feature: str, t: Any, path: str) -> Any:
    """The Conveyor type of a Parquet column type."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return parquet_type(feature, t.value_type, path)
    if pa.types.is_null(t):
        return pa.null()
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pa.int64()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = parquet_type(feature, t.value_type, path)
        if pa.types.is_large_list(inner):
            raise InputProblem(
                f"Parquet file {path}: column {feature!r} is a nested list ({t}); expected flat columns "
                f"or lists of numbers or strings. Flatten it before importing."
            )
        return pa.large_list(inner)
    raise InputProblem(
        f"Parquet file {path}: column {feature!r} has type {t}, which tf.Example cannot hold; expected "
        f"integers, floats, strings, bytes or lists of them. Cast it (e.g. timestamps to int64) first."
    )


def unify(feature: str, a: Any, b: Any, where: str) -> Any:
    """The type holding both `a` and `b` (types seen for `feature` in two
    places), or InputProblem when there is none."""
    import pyarrow as pa

    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    a_list = pa.types.is_large_list(a)
    b_list = pa.types.is_large_list(b)
    if a_list or b_list:
        inner = unify(feature, a.value_type if a_list else a, b.value_type if b_list else b, where)
        return pa.large_list(inner)
    pair = {str(a), str(b)}
    if pair == {"int64", "double"}:
        return pa.float64()
    if pair == {"string", "binary"}:
        return pa.binary()
    raise InputProblem(
        f"feature {feature!r} is {a} in one place and {b} in {where}; a feature must have one type "
        f"throughout the input. Fix the data so the types agree."
    )


def conform(batch: Any, schema: Any) -> Any:
    """`batch` with exactly the columns of `schema`, in its order and types;
    columns it lacks are nulls."""
    import pyarrow as pa

    arrays = []
    names = batch.schema.names
    for field in schema:
        if field.name not in names:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(names.index(field.name))
        if pa.types.is_null(column.type):
            arrays.append(pa.nulls(batch.num_rows, field.type))
        elif column.type != field.type:
            arrays.append(column.cast(field.type))
        else:
            arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclasses.dataclass(frozen=True)
class ParquetPart:
    """Work for one worker: some row groups of one file."""

    file_index: int
    index: int
    path: str
    input_split: str
    row_groups: tuple[int, ...]

    @property
    def order(self) -> tuple[int, int]:
        return (self.file_index, self.index)


def plan_parquet(files: dict[str, list[str]]) -> tuple[Any, list[ParquetPart]]:
    """The output schema (each column's type unified over every file) and the
    work items; InputProblem for a file that is not Parquet, has no rows or
    holds a column tf.Example cannot."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict[str, Any] = {}
    parts: list[ParquetPart] = []
    file_index = 0
    for split, paths in files.items():
        for path in paths:
            filesystem, inner = fs.arrow_filesystem(path)
            try:
                with filesystem.open_input_file(inner) as source:
                    pf = pq.ParquetFile(source)
                    metadata, schema = pf.metadata, pf.schema_arrow
            except (pa.ArrowInvalid, OSError) as e:
                raise InputProblem(
                    f"file {path} is not a Parquet file ({e}). Expected Parquet files; set payload_format to "
                    f"match the files."
                ) from None
            if metadata.num_rows == 0:
                raise InputProblem(
                    f"Parquet file {path} has no rows; expected at least one. Remove the file or fill it."
                )
            for field in schema:
                t = parquet_type(field.name, field.type, path)
                types[field.name] = unify(field.name, types.get(field.name, pa.null()), t, path)
            group: list[int] = []
            rows = 0
            for i in range(metadata.num_row_groups):
                group.append(i)
                rows += metadata.row_group(i).num_rows
                if rows >= ROWS_PER_PART or i == metadata.num_row_groups - 1:
                    parts.append(ParquetPart(file_index, len(parts), path, split, tuple(group)))
                    group, rows = [], 0
            file_index += 1
    schema = pa.schema([(n, pa.int64() if pa.types.is_null(t) else t) for n, t in types.items()])
    return schema, parts


@dataclasses.dataclass(frozen=True)
class ParquetReader:
    """Reads a ParquetPart on a worker into batches of `schema`."""

    schema: Any

    def batches(self, item: ParquetPart) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with open_on_worker(item.path) as f:
                pf = pq.ParquetFile(pa.PythonFile(f, mode="r"))
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=list(item.row_groups)):
                    yield conform(batch, self.schema)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputProblem(
                f"Parquet file {item.path} cannot be read or converted: {e}. Fix the file."
            ) from None
