"""The Chicago taxi pipeline: from a CSV file to a blessed model pushed to a
serving directory, every step recorded in ML Metadata.

    conveyor run examples/taxi/pipeline.py
    conveyor run examples/taxi/pipeline.py --direct_running_mode=multi_processing --direct_num_workers=2

Environment: CONVEYOR_TAXI_ROOT (pipeline root, default `_runs/taxi` in the
repo; an s3:// or gs:// URI works too), CONVEYOR_TAXI_DATA (the CSV folder),
CONVEYOR_TAXI_MODULE (the module file), CONVEYOR_TAXI_TRAIN_STEPS /
CONVEYOR_TAXI_EVAL_STEPS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from conveyor import Pipeline
from conveyor.components import (
    CsvExampleGen,
    Evaluator,
    ExampleValidator,
    LatestArtifact,
    LatestBlessedModel,
    Pusher,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from conveyor.components.evaluator import (
    EvalConfig,
    GenericChangeThreshold,
    GenericValueThreshold,
    MetricConfig,
    MetricDirection,
    MetricsSpec,
    MetricThreshold,
    ModelSpec,
    PerSliceMetricThreshold,
    SlicingSpec,
)
from conveyor.components.pusher import Filesystem, PushDestination
from conveyor.components.trainer import EvalArgs, TrainArgs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

__all__ = ["create_pipeline"]


def create_pipeline(
    root: str | None = None,
    *,
    name: str = "taxi",
    data_root: str | None = None,
    module_file: str | None = None,
    serving_dir: str | None = None,
    train_steps: int | None = None,
    eval_steps: int | None = None,
    beam_pipeline_args: Sequence[str] = (),
) -> Pipeline:
    root = root or os.environ.get("CONVEYOR_TAXI_ROOT") or os.path.join(REPO, "_runs", "taxi")
    data_root = data_root or os.environ.get("CONVEYOR_TAXI_DATA") or os.path.join(HERE, "data")
    module_file = module_file or os.environ.get("CONVEYOR_TAXI_MODULE") or os.path.join(HERE, "taxi_utils.py")
    serving_dir = serving_dir or os.path.join(root, "serving_model")
    train_steps = train_steps or int(os.environ.get("CONVEYOR_TAXI_TRAIN_STEPS", "1000"))
    eval_steps = eval_steps or int(os.environ.get("CONVEYOR_TAXI_EVAL_STEPS", "150"))

    example_gen = CsvExampleGen(input_base=data_root)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"])
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # Last run's analyzer cache lets Transform skip analysis it has done before.
    analyzer_cache = LatestArtifact(artifact_type="TransformCache", producer="transform", id="analyzer_cache")
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        analyzer_cache=analyzer_cache.outputs["artifact"],
        module_file=module_file,
    )
    trainer = Trainer(
        module_file=module_file,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=TrainArgs(num_steps=train_steps),
        eval_args=EvalArgs(num_steps=eval_steps),
    )
    baseline = LatestBlessedModel(candidate=trainer.outputs["model"], id="latest_blessed_model_resolver")
    eval_config = EvalConfig(
        model_specs=[
            ModelSpec(
                signature_name="serving_default",
                label_key="tips_xf",  # the label after Transform (tips > 20% of fare)
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[SlicingSpec(), SlicingSpec(feature_keys=["trip_start_hour"])],
        metrics_specs=[
            MetricsSpec(
                metrics=[
                    MetricConfig(class_name="ExampleCount"),
                    MetricConfig(
                        class_name="BinaryAccuracy",
                        # Checked on the overall slice only: a rare hour must not veto a model.
                        per_slice_thresholds=[
                            PerSliceMetricThreshold(
                                slicing_specs=[SlicingSpec()],
                                threshold=MetricThreshold(
                                    value_threshold=GenericValueThreshold(lower_bound=0.6),
                                    # Must not get worse than the last blessed model.
                                    change_threshold=GenericChangeThreshold(
                                        direction=MetricDirection.HIGHER_IS_BETTER, absolute=-1e-10
                                    ),
                                ),
                            )
                        ],
                    ),
                ]
            )
        ],
    )
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        # With the schema, TFMA decodes examples in batches (several times faster).
        schema=schema_gen.outputs["schema"],
        eval_config=eval_config,
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=PushDestination(filesystem=Filesystem(base_directory=serving_dir)),
    )
    return Pipeline(
        name=name,
        root=root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            analyzer_cache,
            transform,
            trainer,
            baseline,
            evaluator,
            pusher,
        ],
        beam_pipeline_args=list(beam_pipeline_args),
    )
