"""ExampleValidator: the statistics of each split checked against a schema."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact, ExampleAnomalies, ExampleStatistics, Schema, split_uri
from conveyor.components.base import ExecutionContext
from conveyor.pipeline.dsl import Component, Input

__all__ = ["ExampleValidator", "ExampleValidatorParams", "ANOMALIES_FILE_NAME", "describe_anomalies"]

ANOMALIES_FILE_NAME = "SchemaDiff.pb"


@dataclasses.dataclass(frozen=True)
class ExampleValidatorParams:
    # Fail the run (writing nothing) when any split has anomalies, instead of
    # only recording them.
    fail_on_anomalies: bool = False
    exclude_splits: list[str] = dataclasses.field(default_factory=list)
    # The schema environment the data comes from (one of its
    # `default_environment`, e.g. "SERVING"): features `not_in_environment`
    # it are not expected. None checks every feature, as TFX does.
    environment: str | None = None


class ExampleValidator(Component):
    """Validates the statistics of each split against the schema with TFDV
    (missing or unexpected features, wrong types, values outside their
    domain, presence or valency violations). Writes `Split-<name>/SchemaDiff.pb`
    (a binary Anomalies proto) like TFX, and the custom properties
    `anomalies_found` (how many anomalous features over all splits) and
    `anomalies_by_split` (JSON: split -> count). With `fail_on_anomalies`,
    anomalies fail the run instead, and the error lists them."""

    INPUTS = {"statistics": Input(ExampleStatistics), "schema": Input(Schema)}
    OUTPUTS = {"anomalies": ExampleAnomalies}
    Params = ExampleValidatorParams
    EXECUTOR = "conveyor.components.example_validator:run"


def describe_anomalies(anomalies: Any, max_chars: int | None = 240) -> list[str]:
    """One line per anomaly of an Anomalies proto: 'feature: short description
    (detail)', cut to `max_chars`; dataset-level anomalies are named '(dataset)'."""
    lines = [f"{name}: {_describe(anomalies.anomaly_info[name])}" for name in sorted(anomalies.anomaly_info)]
    if anomalies.HasField("dataset_anomaly_info"):
        lines.append(f"(dataset): {_describe(anomalies.dataset_anomaly_info)}")
    if max_chars:
        lines = [line if len(line) <= max_chars else line[: max_chars - 4] + " ..." for line in lines]
    return lines


def _describe(info: Any) -> str:
    short = info.short_description or "; ".join(r.short_description for r in info.reason) or "anomaly"
    return f"{short} ({info.description})" if info.description and info.description != short else short


def _count(anomalies: Any) -> int:
    return len(anomalies.anomaly_info) + (1 if anomalies.HasField("dataset_anomaly_info") else 0)


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: ExampleValidatorParams,
    ctx: ExecutionContext,
) -> None:
    import tensorflow_data_validation as tfdv

    from conveyor import schema as schema_lib
    from conveyor.components.statistics_gen import STATS_FILE_NAME, selected_splits
    from conveyor.errors import closest

    if len(inputs["statistics"]) != 1 or len(inputs["schema"]) != 1:
        raise ctx.error(
            f"expects one ExampleStatistics and one Schema artifact, got {len(inputs['statistics'])} "
            f"and {len(inputs['schema'])}."
        )
    stats_artifact = inputs["statistics"][0]
    splits = selected_splits(
        stats_artifact.splits, params.exclude_splits, f"ExampleStatistics {stats_artifact.uri}", ctx
    )
    try:
        schema = schema_lib.load(inputs["schema"][0].uri)
    except schema_lib.SchemaError as e:
        raise ctx.error(f"cannot read its schema input: {e}") from e
    if params.environment is not None:
        known = list(schema.default_environment)
        for f in schema.feature:
            known += [e for e in (*f.in_environment, *f.not_in_environment) if e not in known]
        if params.environment not in known:
            raise ctx.error(
                f"environment {params.environment!r} is not an environment of the schema "
                f"{inputs['schema'][0].uri} (it has {known or 'none'}).{closest(params.environment, known)} "
                f"Declare it with conveyor.schema.set_environments, or pass environment=None."
            )

    results = {}
    for split in splits:
        path = fs.join(split_uri(stats_artifact, split), STATS_FILE_NAME)
        try:
            stats = schema_lib.load_statistics(path)
        except schema_lib.SchemaError as e:
            raise ctx.error(str(e)) from e
        results[split] = tfdv.validate_statistics(stats, schema, environment=params.environment)

    counts = {split: _count(a) for split, a in results.items()}
    if params.fail_on_anomalies and any(counts.values()):
        lines = [
            f"  split {split!r}, {line}"
            for split, anomalies in results.items()
            for line in describe_anomalies(anomalies)
        ]
        raise ctx.error(
            f"{sum(counts.values())} anomalies against the schema {inputs['schema'][0].uri}:\n"
            + "\n".join(lines)
            + "\nFix the data, or, if the data is right, curate the schema (conveyor.schema) and "
            "import it with ImportSchemaGen; or set fail_on_anomalies=False to only record them."
        )

    out = outputs["anomalies"][0]
    for split, anomalies in results.items():
        fs.makedirs(split_uri(out, split))
        fs.write_bytes(fs.join(split_uri(out, split), ANOMALIES_FILE_NAME), anomalies.SerializeToString())
    out.splits = splits
    out.set("span", int(stats_artifact.properties.get("span", 0)))
    out.custom_properties["anomalies_found"] = sum(counts.values())
    out.custom_properties["anomalies_by_split"] = json.dumps(counts)
