"""Reading and writing the files of an Examples artifact.

On disk (see `conveyor.artifacts.Examples`): `Split-<name>/data-*.parquet`,
one flat column per feature (int64, double or string; a missing value is a
null). Parquet is the default because decoding dominates statistics time and
Arrow batches read from Parquet decode an order of magnitude faster than CSV or
tf.Example. `tfrecords_gzip` (gzipped tf.Example) is kept for interoperability.

Batches come in two shapes: flat (what TFDV reads fastest) and "list" (every
column a large_list, values as large_binary / int64 / float32), the shape
tf.Example decoding gives and tfx_bsl's tensor adapters expect.
"""

from __future__ import annotations

from typing import Any

from conveyor import fs
from conveyor.artifacts import Examples, split_uri

__all__ = [
    "PARQUET",
    "TFRECORDS_GZIP",
    "file_format",
    "file_pattern",
    "split_files",
    "as_list_batch",
    "beam_read_batches",
    "encode_examples",
    "masked_crc",
    "write_tfrecords_gz",
    "parquet_to_tfrecords",
]

PARQUET = "parquet"
TFRECORDS_GZIP = "tfrecords_gzip"
_EXT = {PARQUET: ".parquet", TFRECORDS_GZIP: ".gz"}


def file_format(examples: Examples) -> str:
    return str(examples.get("file_format", PARQUET))


def file_pattern(examples: Examples, split: str) -> str:
    """A glob of the data files of one split."""
    return fs.join(split_uri(examples, split), "data-*" + _EXT[file_format(examples)])


def split_files(examples: Examples, split: str) -> list[str]:
    return sorted(fs.glob(file_pattern(examples, split)))


def as_list_batch(batch: Any) -> Any:
    """A flat record batch as a list-shaped one: each value becomes a
    one-element list, a null an empty list; strings become binary and
    doubles float32, as tf.Example holds them."""
    import numpy as np
    import pyarrow as pa

    arrays = []
    for column in batch.columns:
        if pa.types.is_large_list(column.type) or pa.types.is_list(column.type):
            arrays.append(column)
            continue
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
        values = column.drop_null()
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = values.cast(pa.large_binary())
        elif pa.types.is_binary(values.type):
            values = values.cast(pa.large_binary())
        elif pa.types.is_floating(values.type):
            values = values.cast(pa.float32())
        elif pa.types.is_integer(values.type) or pa.types.is_boolean(values.type):
            values = values.cast(pa.int64())
        arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))
    return pa.RecordBatch.from_arrays(arrays, batch.schema.names)


def beam_read_batches(pipeline: Any, examples: Examples, split: str, *, lists: bool = False,
                      label: str = "") -> Any:
    """A PCollection of Arrow record batches of one split."""
    import apache_beam as beam

    label = label or f"Read[{split}]"
    fmt = file_format(examples)
    if fmt == PARQUET:
        batches = pipeline | label >> beam.io.ReadFromParquetBatched(file_pattern(examples, split))
        batches = batches | f"{label}ToBatches" >> beam.FlatMap(_table_batches)
        if lists:
            batches = batches | f"{label}AsLists" >> beam.Map(as_list_batch)
        return batches
    if fmt == TFRECORDS_GZIP:
        from tfx_bsl.public import tfxio

        source = tfxio.TFExampleRecord(file_pattern(examples, split))
        return pipeline | label >> source.BeamSource()
    raise ValueError(f"Examples {examples.uri} has unknown file_format {fmt!r}")


def _table_batches(table: Any) -> list[Any]:
    # ReadFromParquetBatched yields pyarrow Tables; TFDV and TFT want RecordBatches.
    if hasattr(table, "to_batches"):
        return [b for b in table.to_batches() if b.num_rows]
    return [table]


def encode_examples(batch: Any) -> list[bytes]:
    """Serialized tf.Examples of the rows of a flat Arrow batch (a null becomes
    an empty value list, as CSV-made tf.Examples hold a missing value)."""
    from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

    return RecordBatchToExamplesEncoder().encode(as_list_batch(batch))


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of a length or a record."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords_gz(path: str, records: Any) -> int:
    """Write records as a gzipped TFRecord file (without TensorFlow), local
    or remote; returns how many were written."""
    import gzip
    import struct

    count = 0
    with fs.open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw) as f:
        for record in records:
            length = struct.pack("<Q", len(record))
            f.write(length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record)))
            count += 1
    return count


def parquet_to_tfrecords(split_dir: str) -> None:
    """Turn the `data-*.parquet` files of a split directory into gzipped
    TFRecord files of tf.Example with the same names but `.gz`."""
    import pyarrow.parquet as pq

    for path in fs.glob(fs.join(split_dir, "data-*" + _EXT[PARQUET])):
        filesystem, inner = fs.arrow_filesystem(path)
        with filesystem.open_input_file(inner) as source:
            records = (
                example
                for batch in pq.ParquetFile(source).iter_batches(batch_size=8192)
                for example in encode_examples(batch)
            )
            write_tfrecords_gz(path[: -len(_EXT[PARQUET])] + _EXT[TFRECORDS_GZIP], records)
        fs.remove(path)
