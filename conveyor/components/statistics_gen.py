"""StatisticsGen: TFDV statistics of every split of an Examples artifact."""

from __future__ import annotations

import dataclasses
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact, Examples, ExampleStatistics, Schema, split_uri
from conveyor.components.base import ExecutionContext
from conveyor.errors import PipelineDefinitionError, closest
from conveyor.pipeline.dsl import Component, Input

__all__ = ["StatisticsGen", "StatisticsGenParams", "StatsOptions", "STATS_FILE_NAME"]

STATS_FILE_NAME = "FeatureStats.pb"


@dataclasses.dataclass(frozen=True)
class StatsOptions:
    """The statistics to compute (a subset of `tfdv.StatsOptions`, same names
    and defaults)."""

    # Most frequent values kept per string feature.
    num_top_values: int = 20
    # Buckets of the rank histogram of string values (the schema's string domains come from it).
    num_rank_histogram_buckets: int = 1000
    num_values_histogram_buckets: int = 10
    num_histogram_buckets: int = 10
    num_quantiles_histogram_buckets: int = 10
    # Fraction of rows sampled (None: all). Faster on big data, approximate counts.
    sample_rate: float | None = None
    # Detect semantic domains (images, URLs, natural language) of string features.
    enable_semantic_domain_stats: bool = False
    # Only these features (None: all).
    feature_allowlist: list[str] | None = None
    # A numeric feature weighting each row; adds weighted statistics.
    weight_feature: str | None = None


@dataclasses.dataclass(frozen=True)
class StatisticsGenParams:
    exclude_splits: list[str] = dataclasses.field(default_factory=list)
    stats_options: StatsOptions = dataclasses.field(default_factory=StatsOptions)


class StatisticsGen(Component):
    """Computes TFDV statistics (counts, missing values, histograms, top values,
    ...) of each split of `examples`, in one Beam pipeline. Writes
    `Split-<name>/FeatureStats.pb` (a binary DatasetFeatureStatisticsList) like
    TFX. With a `schema` input, the schema guides the statistics (e.g. a
    feature's declared type and categorical INT features)."""

    INPUTS = {"examples": Input(Examples), "schema": Input(Schema, optional=True)}
    OUTPUTS = {"statistics": ExampleStatistics}
    Params = StatisticsGenParams
    EXECUTOR = "conveyor.components.statistics_gen:run"
    EXECUTOR_IMPORTS = ("apache_beam", "tensorflow_data_validation")
    USES_BEAM = True

    def check(self) -> None:
        o = self.params.stats_options
        if o.sample_rate is not None and not 0.0 < o.sample_rate <= 1.0:
            raise PipelineDefinitionError(
                f"{self._where()} stats_options.sample_rate must be in (0, 1] or None; got {o.sample_rate}."
            )
        for name in ("num_top_values", "num_rank_histogram_buckets", "num_values_histogram_buckets",
                     "num_histogram_buckets", "num_quantiles_histogram_buckets"):
            if getattr(o, name) < 1:
                raise PipelineDefinitionError(
                    f"{self._where()} stats_options.{name} must be at least 1; got {getattr(o, name)}."
                )


def selected_splits(available: list[str], exclude: list[str], what: str, ctx: ExecutionContext) -> list[str]:
    """The splits of `available` not in `exclude`; ExecutorError when an
    excluded name is unknown or nothing is left."""
    if not available:
        raise ctx.error(f"{what} has no splits (its split_names property is empty). Rerun its producer.")
    for name in exclude:
        if name not in available:
            raise ctx.error(
                f"exclude_splits names {name!r}, but {what} has splits {available}.{closest(name, available)}"
            )
    splits = [s for s in available if s not in exclude]
    if not splits:
        raise ctx.error(f"exclude_splits={list(exclude)} excludes every split of {what}; keep at least one.")
    return splits


def to_tfdv_options(options: StatsOptions, schema: Any = None) -> Any:
    """Our StatsOptions as a `tfdv.StatsOptions`."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(
        schema=schema,
        num_top_values=options.num_top_values,
        num_rank_histogram_buckets=options.num_rank_histogram_buckets,
        num_values_histogram_buckets=options.num_values_histogram_buckets,
        num_histogram_buckets=options.num_histogram_buckets,
        num_quantiles_histogram_buckets=options.num_quantiles_histogram_buckets,
        sample_rate=options.sample_rate,
        enable_semantic_domain_stats=options.enable_semantic_domain_stats,
        feature_allowlist=list(options.feature_allowlist) if options.feature_allowlist is not None else None,
        weight_feature=options.weight_feature,
        # With a schema, a feature's declared type wins over the one seen in the data.
        infer_type_from_schema=schema is not None,
    )


def as_stats_batch(batch: Any) -> Any:
    """A flat Parquet batch in the shape TFDV needs: every column a list, and a
    null value a null list (a missing feature, as tf.Example decoding gives),
    not an empty one, so that presence statistics count it as missing."""
    import pyarrow as pa

    from conveyor.components import examples_io

    lists = examples_io.as_list_batch(batch)
    arrays = []
    for flat, column in zip(batch.columns, lists.columns, strict=True):
        if flat.null_count and not (pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type)):
            column = pa.LargeListArray.from_arrays(column.offsets, column.values, mask=flat.is_null())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, lists.schema.names)


def _check_feature_names(
    examples: Examples, split: str, options: StatsOptions, ctx: ExecutionContext
) -> None:
    """Fail fast on option feature names the data does not have (Parquet
    files carry their columns; tf.Example files would need a scan)."""
    from conveyor.components import examples_io

    named = list(options.feature_allowlist or [])
    if options.weight_feature:
        named.append(options.weight_feature)
    if not named or examples_io.file_format(examples) != examples_io.PARQUET:
        return
    import pyarrow.parquet as pq

    first = examples_io.split_files(examples, split)[0]
    with fs.open(first, "rb") as f:
        columns = pq.read_schema(f).names
    for name in named:
        if name not in columns:
            raise ctx.error(
                f"stats_options names the feature {name!r}, but Examples {examples.uri} has no such "
                f"column.{closest(name, columns)} Its columns: {columns}."
            )


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: StatisticsGenParams,
    ctx: ExecutionContext,
) -> None:
    import apache_beam as beam
    import pyarrow as pa
    import tensorflow_data_validation as tfdv

    from conveyor import schema as schema_lib
    from conveyor.components import examples_io

    if len(inputs["examples"]) != 1:
        raise ctx.error(f"expects one Examples artifact, got {len(inputs['examples'])}.")
    examples = inputs["examples"][0]
    splits = selected_splits(examples.splits, params.exclude_splits, f"Examples {examples.uri}", ctx)
    fmt = examples_io.file_format(examples)
    if fmt not in (examples_io.PARQUET, examples_io.TFRECORDS_GZIP):
        raise ctx.error(
            f"Examples {examples.uri} has file_format {fmt!r}; StatisticsGen reads "
            f"{examples_io.PARQUET!r} and {examples_io.TFRECORDS_GZIP!r}."
        )
    for split in splits:
        if not examples_io.split_files(examples, split):
            raise ctx.error(
                f"Examples {examples.uri} split {split!r} has no data files matching "
                f"{examples_io.file_pattern(examples, split)}. Rerun the ExampleGen that made it."
            )
    schema = None
    if inputs.get("schema"):
        try:
            schema = schema_lib.load(inputs["schema"][0].uri)
        except schema_lib.SchemaError as e:
            raise ctx.error(f"cannot read its schema input: {e}") from e
    _check_feature_names(examples, splits[0], params.stats_options, ctx)
    options = to_tfdv_options(params.stats_options, schema)

    out = outputs["statistics"][0]
    with ctx.beam_pipeline() as p:
        for split in splits:
            batches = examples_io.beam_read_batches(p, examples, split, label=f"Read[{split}]")
            if fmt == examples_io.PARQUET:
                batches = batches | f"ToLists[{split}]" >> beam.Map(as_stats_batch).with_output_types(pa.RecordBatch)
            fs.makedirs(split_uri(out, split))
            _ = (
                batches
                | f"GenerateStatistics[{split}]" >> tfdv.GenerateStatistics(options)
                | f"WriteStatistics[{split}]" >> beam.Map(
                    _write_statistics, fs.join(split_uri(out, split), STATS_FILE_NAME)
                )
            )
    out.splits = splits
    out.set("span", int(examples.properties.get("span", 0)))


def _write_statistics(statistics: Any, path: str) -> None:
    """The split's one DatasetFeatureStatisticsList as a binary proto file,
    the bytes tfdv.WriteStatisticsToBinaryFile writes, in one step where
    Beam's file sink takes four pipeline stages per split."""
    fs.write_bytes(path, statistics.SerializeToString())
