"""SchemaGen (a schema inferred from statistics) and ImportSchemaGen (a
user-curated schema file brought into the pipeline)."""

from __future__ import annotations

import dataclasses

from conveyor import fs
from conveyor.artifacts import Artifact, ExampleStatistics, Schema, split_uri
from conveyor.components.base import ExecutionContext
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component, Input

__all__ = ["SchemaGen", "SchemaGenParams", "ImportSchemaGen", "ImportSchemaGenParams"]


@dataclasses.dataclass(frozen=True)
class SchemaGenParams:
    # A feature always present with the same number of values gets a fixed
    # `shape` (dense tensors downstream) rather than a `value_count`.
    infer_feature_shape: bool = True
    # Splits whose statistics are not used (e.g. ["eval"] to infer from train only).
    exclude_splits: list[str] = dataclasses.field(default_factory=list)


class SchemaGen(Component):
    """Infers a schema (types, presence, shapes, string domains) from the
    statistics of every split not excluded, as TFX does: the first split's
    statistics give the schema and the next ones widen it. Writes
    `schema.pbtxt`. To curate it, copy it, edit it (see `conveyor.schema`)
    and use ImportSchemaGen instead."""

    INPUTS = {"statistics": Input(ExampleStatistics)}
    OUTPUTS = {"schema": Schema}
    Params = SchemaGenParams
    EXECUTOR = "conveyor.components.schema_gen:run"


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: SchemaGenParams,
    ctx: ExecutionContext,
) -> None:
    from conveyor import schema as schema_lib
    from conveyor.components.statistics_gen import STATS_FILE_NAME, selected_splits

    if len(inputs["statistics"]) != 1:
        raise ctx.error(f"expects one ExampleStatistics artifact, got {len(inputs['statistics'])}.")
    stats_artifact = inputs["statistics"][0]
    splits = selected_splits(
        stats_artifact.splits, params.exclude_splits, f"ExampleStatistics {stats_artifact.uri}", ctx
    )
    statistics = []
    for split in splits:
        try:
            statistics.append(
                schema_lib.load_statistics(fs.join(split_uri(stats_artifact, split), STATS_FILE_NAME))
            )
        except schema_lib.SchemaError as e:
            raise ctx.error(str(e)) from e
    schema = schema_lib.infer(statistics, infer_feature_shape=params.infer_feature_shape)
    if not schema.feature:
        raise ctx.error(
            f"the statistics of splits {splits} in {stats_artifact.uri} have no features, so there is "
            f"no schema to infer. Check the Examples StatisticsGen read."
        )
    schema_lib.save(schema, fs.join(outputs["schema"][0].uri, schema_lib.FILE_NAME))


@dataclasses.dataclass(frozen=True)
class ImportSchemaGenParams:
    # Path of a text-format Schema (schema.pbtxt).
    schema_file: str


class ImportSchemaGen(Component):
    """Brings a user-curated `schema.pbtxt` into the pipeline as a Schema
    artifact. The file is checked (it must parse as a Schema with features)
    and copied unchanged; its content is part of the cache key, so editing
    it reruns what depends on it."""

    INPUTS: dict[str, Input] = {}
    OUTPUTS = {"schema": Schema}
    Params = ImportSchemaGenParams
    EXECUTOR = "conveyor.components.schema_gen:run_import"

    def check(self) -> None:
        if not self.params.schema_file:
            raise PipelineDefinitionError(f"{self._where()} needs schema_file=, the path of a schema.pbtxt.")

    def external_fingerprints(self) -> dict[str, str]:
        from conveyor.components.base import fingerprint_files

        # A missing file is reported by the executor, with what to do.
        path = fs.abspath(self.params.schema_file)
        return {"schema_file": fingerprint_files([path])} if fs.isfile(path) else {}


def run_import(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: ImportSchemaGenParams,
    ctx: ExecutionContext,
) -> None:
    from conveyor import schema as schema_lib

    source = params.schema_file
    if not fs.isfile(source):
        raise ctx.error(
            f"schema_file {source!r} does not exist"
            + (" (it is a directory; name the schema.pbtxt inside it)" if fs.isdir(source) else "")
            + ". Pass the path of a text-format schema, e.g. one written by SchemaGen and curated."
        )
    try:
        schema = schema_lib.load(source)
    except schema_lib.SchemaError as e:
        raise ctx.error(f"schema_file is not usable: {e}") from e
    if not schema.feature:
        raise ctx.error(
            f"schema_file {source} parses but declares no features. A curated schema lists every "
            f"feature (`feature {{ name: ... type: ... }}`); start from SchemaGen's schema.pbtxt."
        )
    # Copied byte for byte, comments and all, as TFX does.
    fs.copy(source, fs.join(outputs["schema"][0].uri, schema_lib.FILE_NAME))
