"""Palmer penguins: a three-class classifier, from CSV to a pushed model.

    conveyor run examples/penguin/pipeline.py

CONVEYOR_PENGUIN_ROOT sets the pipeline root (default `_runs/penguin` in the repo).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from conveyor import Pipeline
from conveyor.components import (
    CsvExampleGen,
    Evaluator,
    ExampleValidator,
    LatestBlessedModel,
    Pusher,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from conveyor.components.evaluator import (
    EvalConfig,
    GenericValueThreshold,
    MetricConfig,
    MetricsSpec,
    MetricThreshold,
    ModelSpec,
    SlicingSpec,
)
from conveyor.components.trainer import EvalArgs, TrainArgs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

__all__ = ["create_pipeline"]


def create_pipeline(
    root: str | None = None,
    *,
    name: str = "penguin",
    data_root: str = os.path.join(HERE, "data"),
    module_file: str = os.path.join(HERE, "penguin_utils.py"),
    serving_dir: str | None = None,
    train_steps: int = 200,
    eval_steps: int = 10,
    examples_format: str = "parquet",
    beam_pipeline_args: Sequence[str] = (),
) -> Pipeline:
    root = root or os.environ.get("CONVEYOR_PENGUIN_ROOT") or os.path.join(REPO, "_runs", "penguin")
    serving_dir = serving_dir or os.path.join(root, "serving_model")

    # "tfrecords_gzip" writes tf.Example, as TFX does; Parquet decodes faster.
    example_gen = CsvExampleGen(input_base=data_root, output_file_format=examples_format)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"])
    # Penguin data is clean: any anomaly stops the run before training.
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"], fail_on_anomalies=True
    )
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"], module_file=module_file
    )
    trainer = Trainer(
        module_file=module_file,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=TrainArgs(num_steps=train_steps),
        eval_args=EvalArgs(num_steps=eval_steps),
    )
    baseline = LatestBlessedModel(candidate=trainer.outputs["model"], id="latest_blessed_model_resolver")
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        # With the schema, TFMA decodes examples in batches (several times faster).
        schema=schema_gen.outputs["schema"],
        eval_config=EvalConfig(
            model_specs=[
                ModelSpec(
                    signature_name="serving_default",
                    label_key="species_xf",
                    preprocessing_function_names=["transform_features"],
                )
            ],
            slicing_specs=[SlicingSpec()],
            metrics_specs=[
                MetricsSpec(
                    metrics=[
                        MetricConfig(
                            class_name="SparseCategoricalAccuracy",
                            threshold=MetricThreshold(value_threshold=GenericValueThreshold(lower_bound=0.6)),
                        )
                    ]
                )
            ],
        ),
    )
    pusher = Pusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                    base_directory=serving_dir)
    return Pipeline(
        name=name,
        root=root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, transform, trainer, baseline,
                    evaluator, pusher],
        beam_pipeline_args=list(beam_pipeline_args),
    )
