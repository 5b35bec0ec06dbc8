"""Regenerates the ExampleGen outputs other components' tests read:

    tests/testdata/taxi/example_gen/examples/Split-{train,eval}/data-*.parquet
    tests/testdata/taxi/example_gen/examples.json      (the artifact's properties)
    tests/testdata/penguin/example_gen/...              (the same for penguin)

Run from anywhere: `python tests/testdata/make_example_gen.py`. The output is
the real CsvExampleGen executor's, on the example data in `examples/`.

`tests/testdata/taxi/example_gen/import/` holds ImportExampleGen's test input,
copied from /work/shared/data/taxi: `parquet/data.parquet` as it is and
`tfrecord/data_tfrecord-00000-of-00001.gz`, the first 2,000 records of
`tfrecord/data_tfrecord-00001-of-00002.gz`.
"""

from __future__ import annotations

import json
import os
import shutil

from conveyor.artifacts import Examples
from conveyor.components.base import ExecutionContext
from conveyor.components.example_gen import CsvExampleGen, run_csv

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

DATASETS = {
    "taxi": os.path.join(REPO, "examples", "taxi", "data"),
    "penguin": os.path.join(REPO, "examples", "penguin", "data"),
}


def make(name: str, input_base: str) -> Examples:
    target = os.path.join(HERE, name, "example_gen")
    examples_dir = os.path.join(target, "examples")
    shutil.rmtree(examples_dir, ignore_errors=True)
    os.makedirs(examples_dir)
    component = CsvExampleGen(input_base=input_base)
    examples = Examples(examples_dir)
    run_csv({}, {"examples": [examples]}, component.params, ExecutionContext(component_id=component.id))
    # Paths in the record are relative to the repo, so the file is the same on every machine.
    custom = dict(examples.custom_properties)
    custom["input_base"] = os.path.relpath(custom["input_base"], REPO)
    custom["input_files"] = json.dumps(
        {k: [os.path.relpath(p, REPO) for p in v] for k, v in json.loads(custom["input_files"]).items()}
    )
    custom.pop("input_fingerprint")  # Holds file modification times, which differ per checkout.
    with open(os.path.join(target, "examples.json"), "w") as f:
        json.dump(
            {"type": examples.TYPE_NAME, "uri": "examples", "properties": examples.properties,
             "custom_properties": custom},
            f, indent=2, sort_keys=True,
        )
        f.write("\n")
    return examples


def main() -> None:
    for name, input_base in DATASETS.items():
        examples = make(name, input_base)
        print(name, examples.properties, examples.custom_properties["row_counts"])


if __name__ == "__main__":
    main()
