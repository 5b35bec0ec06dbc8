"""What the Trainer hands the user's `run_fn`: `FnArgs`, with the attribute
names TFX module files use, and a `DataAccessor` that turns the files of an
Examples artifact into a `tf.data.Dataset` or Arrow record batches.

A TFX module file runs once its `from tfx... import FnArgs` line becomes
`from conveyor.components.fn_args import FnArgs`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from conveyor import fs

__all__ = ["FnArgs", "DataAccessor"]


class DataAccessor:
    """Reads examples in the format they were written in (`parquet` or
    `tfrecords_gzip`).

    `tf_dataset_factory(file_pattern, options, schema)` returns a
    `tf.data.Dataset` of batches (a dict of feature tensors, or
    `(features, label)` when `options.label_key` is set), typed by `schema`
    (a tensorflow_metadata Schema, e.g.
    `tft.TFTransformOutput(...).transformed_metadata.schema`).
    `record_batch_factory(file_pattern, options, schema)` returns an iterator
    of `pyarrow.RecordBatch` (list-shaped columns, as tf.Example gives).
    `options` are tfx_bsl's `TensorFlowDatasetOptions` / `RecordBatchesOptions`.
    Parquet rows are shuffled in blocks of `shuffle_buffer_size` consecutive
    rows, each block permuted anew on each pass (tfx_bsl's tf.Example
    datasets draw from a sliding buffer of that size instead).

    The datasets come with tf.data's autotuning off (`Options.autotune`):
    with it on, TensorFlow 2.16 destroys an iterator (Keras does at the end
    of every `fit` and `evaluate`) only once the autotuner's thread has
    slept out its period, which grows to seconds as training goes on; that
    cost 1.6 to 9 s at the end of one fit in four of the taxi example's.
    Prefetch buffers still grow as needed, and a `map(...,
    num_parallel_calls=tf.data.AUTOTUNE)` gets a thread per core (at most
    16). `dataset.with_options(...)` can turn autotuning back on.
    """

    def __init__(self, file_format: str) -> None:
        from conveyor.components import examples_io

        if file_format not in (examples_io.PARQUET, examples_io.TFRECORDS_GZIP):
            raise ValueError(
                f"DataAccessor cannot read examples in format {file_format!r}; it reads "
                f"{examples_io.PARQUET!r} and {examples_io.TFRECORDS_GZIP!r}."
            )
        self.file_format = file_format

    def __repr__(self) -> str:
        return f"DataAccessor(file_format={self.file_format!r})"

    def tf_dataset_factory(self, file_pattern: str | Sequence[str], options: Any, schema: Any) -> Any:
        from conveyor.components import examples_io

        if self.file_format == examples_io.TFRECORDS_GZIP:
            from tfx_bsl.public import tfxio

            dataset = tfxio.TFExampleRecord(_patterns(file_pattern), schema=schema).TensorFlowDataset(options)
        else:
            dataset = _parquet_dataset(_patterns(file_pattern), options, schema)
        return _without_autotune(dataset)

    def record_batch_factory(self, file_pattern: str | Sequence[str], options: Any,
                             schema: Any) -> Iterator[Any]:
        from conveyor.components import examples_io

        if self.file_format == examples_io.TFRECORDS_GZIP:
            from tfx_bsl.public import tfxio

            return tfxio.TFExampleRecord(_patterns(file_pattern), schema=schema).RecordBatches(options)
        return _parquet_record_batches(_patterns(file_pattern), options, schema)


@dataclasses.dataclass
class FnArgs:
    """The argument of `run_fn(fn_args)`; the attribute names are TFX's.

    train_files / eval_files: file patterns of the train / eval splits.
    train_steps / eval_steps: from TrainArgs / EvalArgs (None: until the data ends).
    schema_path (= schema_file): the input schema's `schema.pbtxt`, if any.
    transform_output (= transform_graph_path): the Transform graph directory,
        for `tft.TFTransformOutput`, if any.
    serving_model_dir: where run_fn must save the SavedModel.
    model_run_dir: for logs and TensorBoard events.
    base_model: the SavedModel directory of the `base_model` input, if any.
    data_accessor: reads the example files (see DataAccessor).
    """

    train_files: list[str] = dataclasses.field(default_factory=list)
    eval_files: list[str] = dataclasses.field(default_factory=list)
    train_steps: int | None = None
    eval_steps: int | None = None
    schema_path: str | None = None
    schema_file: str | None = None
    transform_output: str | None = None
    transform_graph_path: str | None = None
    serving_model_dir: str = ""
    model_run_dir: str = ""
    base_model: str | None = None
    custom_config: dict = dataclasses.field(default_factory=dict)
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    data_accessor: DataAccessor | None = None

    @property
    def working_dir(self) -> str:
        """TFX's name for a scratch directory of the run."""
        return self.model_run_dir


def _without_autotune(dataset: Any) -> Any:
    """`dataset` with tf.data's autotuner off (see DataAccessor)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


# -- Parquet ---------------------------------------------------------------------


# Rows per block read without shuffling (and per Parquet read when shuffling).
_UNSHUFFLED_BLOCK_ROWS = 1024


def _patterns(file_pattern: str | Sequence[str]) -> list[str]:
    return [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)


def _parquet_files(patterns: list[str]) -> list[str]:
    files = sorted({f for p in patterns for f in fs.glob(p)})
    if not files:
        raise FileNotFoundError(f"no Parquet files match {patterns}")
    return files


def _parquet_list_batches(files: list[str], arrow_schema: Any, batch_size: int) -> Iterator[Any]:
    """List-shaped record batches conformed to `arrow_schema`."""
    import pyarrow.parquet as pq

    from conveyor.components.examples_io import as_list_batch
    from conveyor.components.transform import conform_batch

    names = set(arrow_schema.names)
    for path in files:
        parquet = pq.ParquetFile(fs.open(path, "rb"))
        columns = [n for n in parquet.schema_arrow.names if n in names]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            if batch.num_rows:
                yield conform_batch(as_list_batch(batch), arrow_schema)


def _source_for(schema: Any) -> Any:
    from tfx_bsl.public import tfxio

    # Only used for the Arrow schema and tensor representations the schema implies.
    return tfxio.TFExampleRecord(file_pattern="unused", schema=schema)


def _parquet_record_batches(patterns: list[str], options: Any, schema: Any) -> Iterator[Any]:
    files = _parquet_files(patterns)
    arrow_schema = _source_for(schema).ArrowSchema()
    epochs = options.num_epochs
    epoch = 0
    while epochs is None or epoch < epochs:
        yield from _parquet_list_batches(files, arrow_schema, options.batch_size)
        epoch += 1


def _parquet_dataset(patterns: list[str], options: Any, schema: Any) -> Any:
    """A tf.data.Dataset over Parquet example files, shaped like tfx_bsl's
    TensorFlowDataset for tf.Example files.

    Rows are shuffled in blocks of `shuffle_buffer_size` rows read in file
    order (a permutation of each block, new for each pass over the data,
    reproducible given `shuffle_seed`), and the blocks are cut into batches
    with `rebatch`: tf.data's row-by-row unbatch, shuffle and batch cost
    ~1 ms of CPU per batch of 40 (1.0 s against 0.3 s for the 1,000 steps
    of the taxi example), beside the training loop."""
    import numpy as np
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.public import tfxio

    files = _parquet_files(patterns)
    source = _source_for(schema)
    arrow_schema = source.ArrowSchema()
    adapter = tfxio.TensorAdapter(source.TensorAdapterConfig())
    type_specs = adapter.TypeSpecs()
    if options.label_key is not None and options.label_key not in type_specs:
        raise ValueError(f"label_key {options.label_key!r} is not a feature of the schema: "
                         f"{sorted(type_specs)}")
    shuffle = bool(options.shuffle)
    block_rows = max(int(options.shuffle_buffer_size), 1) if shuffle else _UNSHUFFLED_BLOCK_ROWS
    passes = itertools.count()  # one per iteration of the generator: each pass reshuffles

    def blocks(rng: Any) -> Iterator[Any]:
        pending: list[Any] = []
        rows = 0
        for batch in _parquet_list_batches(files, arrow_schema, min(block_rows, _UNSHUFFLED_BLOCK_ROWS)):
            pending.append(batch)
            rows += batch.num_rows
            if rows >= block_rows:
                yield block_of(pending, rng)
                pending, rows = [], 0
        if pending:
            yield block_of(pending, rng)

    def block_of(batches: list[Any], rng: Any) -> Any:
        table = pa.Table.from_batches(batches, schema=arrow_schema)
        if rng is not None:
            table = table.take(rng.permutation(table.num_rows))
        return table.combine_chunks().to_batches()[0]  # batches hold rows: never empty

    def generate() -> Iterator[dict[str, Any]]:
        rng = None
        if shuffle:
            seed = None if options.shuffle_seed is None else (int(options.shuffle_seed), next(passes))
            rng = np.random.default_rng(seed)
        for block in blocks(rng):
            yield adapter.ToBatchTensors(block)

    dataset = tf.data.Dataset.from_generator(generate, output_signature=type_specs)
    if options.num_epochs is not None:
        dataset = dataset.repeat(options.num_epochs)
    else:
        dataset = dataset.repeat()
    dataset = dataset.rebatch(options.batch_size, drop_remainder=options.drop_final_batch)
    if options.label_key is not None:
        label_key = options.label_key

        def split_label(features: dict[str, Any]) -> tuple[dict[str, Any], Any]:
            features = dict(features)
            return features, features.pop(label_key)

        dataset = dataset.map(split_label)
    return dataset.prefetch(tf.data.AUTOTUNE)
