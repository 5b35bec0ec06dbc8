"""TFRecord import: tf.Example records decoded with tfx_bsl, on the
workers. What every file's records show of each feature (its value type,
whether a row ever holds several values, whether its bytes are all UTF-8)
fixes the output schema, so the files are decoded twice: once to learn that
(FeatureKinds, merged on the driver in file order), once to write."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from conveyor.components import examples_io
from conveyor.components.example_gen.inputs import InputProblem, open_on_worker

__all__ = ["TfrecordFile", "TfrecordReader", "FeatureKinds", "from_decoded", "flatten_lists"]

_RECORDS_PER_BATCH = 8192
_HINT = (
    "Expected a TFRecord file of tf.Example (gzipped or not); write it with "
    "tf.io.TFRecordWriter, or set payload_format to match the files."
)


@dataclasses.dataclass(frozen=True)
class TfrecordFile:
    """Work for one worker: one TFRecord file."""

    index: int
    path: str
    input_split: str

    @property
    def order(self) -> tuple[int, int]:
        return (self.index, 0)


def _records(path: str, f: Any) -> Iterator[bytes]:
    try:
        yield from examples_io.read_tfrecords(f)
    except examples_io.TFRecordError as e:
        if e.kind == "gzip":
            raise InputProblem(f"file {path} cannot be read as gzip ({e.detail}). {_HINT}") from None
        if e.kind == "header":
            raise InputProblem(
                f"file {path} is not a TFRecord file: record #{e.index} has a bad header. {_HINT}"
            ) from None
        if e.kind == "checksum":
            raise InputProblem(
                f"TFRecord file {path}: record #{e.index} fails its checksum (corrupt file). {_HINT}"
            ) from None
        raise InputProblem(f"TFRecord file {path} is truncated in record #{e.index}. {_HINT}") from None


def _decoded(path: str) -> Iterator[Any]:
    """Record batches (list-shaped, tfx_bsl's decoding) of one TFRecord file."""
    from tfx_bsl.coders import example_coder

    decoder = example_coder.ExamplesToRecordBatchDecoder()
    records: list[bytes] = []
    done = 0

    def decode(chunk: list[bytes]) -> Any:
        try:
            return decoder.DecodeBatch(chunk)
        except RuntimeError:
            for i, record in enumerate(chunk):
                try:
                    decoder.DecodeBatch([record])
                except RuntimeError:
                    raise InputProblem(
                        f"TFRecord file {path}: record #{done + i} is not a serialized tf.Example. "
                        f"ImportExampleGen with payload_format='tfrecord' reads tf.Example records only."
                    ) from None
            raise

    with open_on_worker(path) as f:
        for record in _records(path, f):
            records.append(record)
            if len(records) == _RECORDS_PER_BATCH:
                yield decode(records)
                done += len(records)
                records = []
    if records:
        yield decode(records)
    elif done == 0:
        raise InputProblem(
            f"TFRecord file {path} holds no records; expected tf.Example records. Remove the file or fill it."
        )


_KIND_NAMES = {"int64": "int64_list", "float": "float_list", "large_binary": "bytes_list"}


class FeatureKinds:
    """What the decoded batches show of each feature: its value type, whether
    a row ever has more than one value, whether every bytes value is UTF-8."""

    def __init__(self) -> None:
        import pyarrow as pa

        self.kinds: dict[str, Any] = {}
        self.multi: set[str] = set()
        self.not_utf8: set[str] = set()
        self._null = pa.null()

    def add(self, batch: Any, path: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for field, column in zip(batch.schema, batch.columns, strict=True):
            name = field.name
            value_type = field.type.value_type if pa.types.is_large_list(field.type) else field.type
            self._note(name, value_type, path)
            if pa.types.is_null(value_type):
                continue
            if name not in self.multi and (pc.max(pc.list_value_length(column)).as_py() or 0) > 1:
                self.multi.add(name)
            if pa.types.is_large_binary(value_type) and name not in self.not_utf8:
                try:
                    column.flatten().cast(pa.large_string())
                except pa.ArrowInvalid:
                    self.not_utf8.add(name)

    def _note(self, name: str, value_type: Any, path: str) -> None:
        """Record feature `name`'s value type, seen in `path`; a feature of two types is bad input."""
        import pyarrow as pa

        previous = self.kinds.get(name, self._null)
        if pa.types.is_null(previous):
            self.kinds[name] = value_type
        elif not pa.types.is_null(value_type) and value_type != previous:
            raise InputProblem(
                f"feature {name!r} holds {_KIND_NAMES.get(str(previous), previous)} in an earlier "
                f"record but {_KIND_NAMES.get(str(value_type), value_type)} in {path}; a feature "
                f"must have one type throughout the input. Fix the data so the types agree."
            )

    def merge(self, other: FeatureKinds, path: str) -> None:
        """Add what another file's batches showed (`path`: that file)."""

        for name, value_type in other.kinds.items():
            self._note(name, value_type, path)
        self.multi |= other.multi
        self.not_utf8 |= other.not_utf8

    def schema(self) -> Any:
        """A column per feature seen anywhere; flat when no row has more than
        one value; bytes as string when every value is UTF-8."""
        import pyarrow as pa

        fields = []
        for name in sorted(self.kinds):
            kind = self.kinds[name]
            if pa.types.is_large_binary(kind):
                flat = pa.binary() if name in self.not_utf8 else pa.string()
            elif pa.types.is_floating(kind):
                flat = pa.float64()  # float32 widens exactly
            else:
                flat = pa.int64()  # int64, or a feature that never has a value
            fields.append((name, pa.large_list(flat) if name in self.multi else flat))
        return pa.schema(fields)


def flatten_lists(column: Any, target: Any) -> Any:
    """A list column whose rows hold at most one value as a flat column of
    `target` type; an empty or missing list is a null."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    valid = lengths > 0
    values = column.flatten()
    if pa.types.is_large_binary(values.type) and pa.types.is_string(target):
        values = values.cast(pa.large_string())
    if valid.all():
        return values.cast(target)
    index = pa.array(np.cumsum(valid) - 1, mask=~valid)
    return values.take(index).cast(target)


def from_decoded(batch: Any, schema: Any) -> Any:
    """A decoded (list-shaped) batch in the output schema."""
    import pyarrow as pa

    names = batch.schema.names
    arrays = []
    for field in schema:
        column = batch.column(names.index(field.name)) if field.name in names else None
        if column is None or pa.types.is_null(column.type):
            arrays.append(pa.nulls(batch.num_rows, field.type))
        elif pa.types.is_large_list(field.type):
            if pa.types.is_string(field.type.value_type):
                column = column.cast(pa.large_list(pa.large_string()))
            arrays.append(column.cast(field.type))
        else:
            arrays.append(flatten_lists(column, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclasses.dataclass(frozen=True)
class TfrecordReader:
    """Reads a TfrecordFile on a worker: its FeatureKinds, or (given the
    schema) its batches in the output schema."""

    schema: Any = None

    def kinds(self, item: TfrecordFile) -> FeatureKinds:
        kinds = FeatureKinds()
        for batch in _decoded(item.path):
            kinds.add(batch, item.path)
        return kinds

    def batches(self, item: TfrecordFile) -> Iterator[Any]:
        for batch in _decoded(item.path):
            yield from_decoded(batch, self.schema)
