"""Regenerate the StatisticsGen and SchemaGen test data from the ExampleGen
test data, by running the real executors:

    .venv/bin/python tests/testdata/make_schema.py

For each dataset with `tests/testdata/<name>/example_gen/examples/` (and its
properties in `examples.json`), writes

    <name>/statistics_gen/statistics/Split-<split>/FeatureStats.pb
    <name>/statistics_gen/statistics.json      (the artifact's properties)
    <name>/schema_gen/schema/schema.pbtxt
"""

from __future__ import annotations

import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATASETS = ("taxi", "penguin")


def load_artifact(cls: type, uri: str, json_path: str):  # noqa: ANN201
    """An artifact at `uri` with the properties recorded next to it in JSON."""
    with open(json_path, encoding="utf-8") as f:
        record = json.load(f)
    return cls(uri, properties=record["properties"], custom_properties=record["custom_properties"])


def dump_properties(artifact, json_path: str) -> None:  # noqa: ANN001
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(
            {"type": artifact.TYPE_NAME, "uri": os.path.basename(artifact.uri),
             "properties": artifact.properties, "custom_properties": artifact.custom_properties},
            f, indent=2, sort_keys=True,
        )
        f.write("\n")


def make(name: str, examples) -> None:  # noqa: ANN001
    from conveyor.artifacts import ExampleStatistics, Schema
    from conveyor.components import schema_gen, statistics_gen
    from conveyor.components.base import ExecutionContext

    base = os.path.join(HERE, name)
    stats_dir = os.path.join(base, "statistics_gen", "statistics")
    schema_dir = os.path.join(base, "schema_gen", "schema")
    for d in (stats_dir, schema_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    stats = ExampleStatistics(stats_dir)
    statistics_gen.run(
        {"examples": [examples]}, {"statistics": [stats]}, statistics_gen.StatisticsGenParams(),
        ExecutionContext("statistics_gen"),
    )
    dump_properties(stats, os.path.join(base, "statistics_gen", "statistics.json"))
    schema_gen.run(
        {"statistics": [stats]}, {"schema": [Schema(schema_dir)]}, schema_gen.SchemaGenParams(),
        ExecutionContext("schema_gen"),
    )
    print(f"{name}: wrote {stats_dir} ({stats.splits}) and {schema_dir}/schema.pbtxt")


def main() -> int:
    from conveyor.artifacts import Examples

    made = 0
    for name in DATASETS:
        uri = os.path.join(HERE, name, "example_gen", "examples")
        if not os.path.isdir(uri):
            print(f"{name}: no {uri}; skipped (run the ExampleGen test data script first)")
            continue
        make(name, load_artifact(Examples, uri, os.path.join(HERE, name, "example_gen", "examples.json")))
        made += 1
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
