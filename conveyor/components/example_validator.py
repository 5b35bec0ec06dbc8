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
    # With `serving_statistics`: the splits of `statistics` compared with the
    # serving data for skew, and the serving statistics' split to compare
    # them with ("" when it has a single split).
    skew_splits: list[str] = dataclasses.field(default_factory=lambda: ["train"])
    serving_split: str = ""


class ExampleValidator(Component):
    """Validates the statistics of each split against the schema with TFDV
    (missing or unexpected features, wrong types, values outside their
    domain, presence or valency violations). Writes `Split-<name>/SchemaDiff.pb`
    (a binary Anomalies proto) like TFX, and the custom properties
    `anomalies_found` (how many anomalous features over all splits) and
    `anomalies_by_split` (JSON: split -> count). With `fail_on_anomalies`,
    anomalies fail the run instead, and the error lists them.

    Drift and skew, for the features whose schema entry has a
    `drift_comparator` / `skew_comparator` (`conveyor.schema.set_drift_comparator`):
    `previous_statistics` (the previous span's, e.g. from a `PreviousSpan`
    resolver) is compared split by split with `statistics`;
    `serving_statistics` (StatisticsGen over serving data) with the
    `skew_splits` of `statistics`. Each feature over its threshold is an
    anomaly of its split."""

    INPUTS = {
        "statistics": Input(ExampleStatistics),
        "schema": Input(Schema),
        "previous_statistics": Input(ExampleStatistics, optional=True),
        "serving_statistics": Input(ExampleStatistics, optional=True),
    }
    OUTPUTS = {"anomalies": ExampleAnomalies}
    Params = ExampleValidatorParams
    EXECUTOR = "conveyor.components.example_validator:run"
    EXECUTOR_IMPORTS = ("tensorflow_data_validation",)


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


def _serving_split(serving: Artifact, params: ExampleValidatorParams, ctx: ExecutionContext) -> str:
    names = list(serving.splits)  # type: ignore[attr-defined]
    if params.serving_split:
        if params.serving_split not in names:
            raise ctx.error(
                f"serving_split {params.serving_split!r} is not a split of the serving statistics "
                f"{serving.uri} (it has {names}). Fix serving_split."
            )
        return params.serving_split
    if len(names) != 1:
        raise ctx.error(
            f"the serving statistics {serving.uri} have splits {names}; set serving_split= to the one to "
            f"compare with the training data."
        )
    return names[0]


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

    def load(artifact: Artifact, split: str, what: str) -> Any:
        try:
            return schema_lib.load_statistics(fs.join(split_uri(artifact, split), STATS_FILE_NAME))
        except schema_lib.SchemaError as e:
            raise ctx.error(f"{what}: {e}") from e

    previous = (inputs.get("previous_statistics") or [None])[0]
    serving = (inputs.get("serving_statistics") or [None])[0]
    serving_split = _serving_split(serving, params, ctx) if serving is not None else None
    if serving is not None:
        missing = [s for s in params.skew_splits if s not in splits]
        if missing:
            raise ctx.error(
                f"skew_splits {missing} are not among the validated splits {splits} of {stats_artifact.uri}. "
                f"Fix skew_splits."
            )
    results = {}
    for split in splits:
        stats = load(stats_artifact, split, "input `statistics`")
        extra: dict[str, Any] = {}
        if previous is not None and split in previous.splits:
            extra["previous_statistics"] = load(previous, split, "input `previous_statistics`")
        if serving is not None and split in params.skew_splits:
            extra["serving_statistics"] = load(serving, serving_split, "input `serving_statistics`")
        results[split] = tfdv.validate_statistics(stats, schema, environment=params.environment, **extra)

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
