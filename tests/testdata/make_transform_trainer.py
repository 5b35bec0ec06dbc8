"""Regenerates the Transform and Trainer test data from the ExampleGen and
SchemaGen test data, by running the real executors on the taxi example:

    tests/testdata/taxi/transform/transform_graph/          (tft.TFTransformOutput)
    tests/testdata/taxi/transform/transformed_examples/     (+ transformed_examples.json)
    tests/testdata/taxi/trainer/model/Format-Serving/       (a short-trained SavedModel)

Run from the repository root:
    .venv/bin/python tests/testdata/make_transform_trainer.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from conveyor.artifacts import Examples, Model, ModelRun, Schema, TransformCache, TransformGraph
from conveyor.components import trainer, transform
from conveyor.components.base import ExecutionContext

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TAXI = os.path.join(HERE, "taxi")
MODULE_FILE = os.path.join(REPO, "examples", "taxi", "taxi_utils.py")


def load_examples(uri: str, properties_file: str) -> Examples:
    with open(properties_file, encoding="utf-8") as f:
        recorded = json.load(f)
    examples = Examples(uri, properties=recorded.get("properties", {}),
                        custom_properties=recorded.get("custom_properties", {}))
    return examples


def dump_artifact(artifact: Examples, path: str, uri: str) -> None:
    """The artifact's properties next to its copy (as make_example_gen.py does)."""
    record = {
        "type": artifact.TYPE_NAME,
        "uri": uri,
        "properties": artifact.properties,
        "custom_properties": artifact.custom_properties,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", default=os.path.join(TAXI, "example_gen", "examples"))
    parser.add_argument("--examples_json", default=os.path.join(TAXI, "example_gen", "examples.json"))
    parser.add_argument("--schema", default=os.path.join(TAXI, "schema_gen", "schema"))
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="conveyor_testdata_")
    try:
        examples = load_examples(args.examples, args.examples_json)
        graph = TransformGraph(os.path.join(work, "transform_graph"))
        transformed = Examples(os.path.join(work, "transformed_examples"))
        cache = TransformCache(os.path.join(work, "updated_analyzer_cache"))
        for a in (graph, transformed, cache):
            os.makedirs(a.uri)
        transform.run(
            {"examples": [examples], "schema": [Schema(args.schema)]},
            {"transform_graph": [graph], "transformed_examples": [transformed],
             "updated_analyzer_cache": [cache]},
            transform.TransformParams(module_file=MODULE_FILE),
            ExecutionContext("transform", tmp_dir=os.path.join(work, "tmp")),
        )
        model = Model(os.path.join(work, "model"))
        model_run = ModelRun(os.path.join(work, "model_run"))
        for a in (model, model_run):
            os.makedirs(a.uri)
        trainer.run(
            {"examples": [transformed], "transform_graph": [graph], "schema": [Schema(args.schema)]},
            {"model": [model], "model_run": [model_run]},
            trainer.TrainerParams(
                module_file=MODULE_FILE,
                train_args=trainer.TrainArgs(num_steps=args.steps),
                eval_args=trainer.EvalArgs(num_steps=20),
            ),
            ExecutionContext("trainer"),
        )

        out_transform = os.path.join(TAXI, "transform")
        out_trainer = os.path.join(TAXI, "trainer")
        for d in (out_transform, out_trainer):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        shutil.copytree(graph.uri, os.path.join(out_transform, "transform_graph"))
        shutil.copytree(transformed.uri, os.path.join(out_transform, "transformed_examples"))
        dump_artifact(transformed, os.path.join(out_transform, "transformed_examples.json"),
                      "transformed_examples")
        shutil.copytree(os.path.join(model.uri, trainer.SERVING_MODEL_DIR),
                        os.path.join(out_trainer, "model", trainer.SERVING_MODEL_DIR))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
