"""TFX's twin of examples/taxi/pipeline.py, run with TFX's LocalDagRunner.

Runs in the TFX peer venv (bench/peers/setup_tfx.sh), not in Conveyor's:

    $TFX_VENV/bin/python bench/peers/tfx_taxi.py --data-root examples/taxi/data \\
        --pipeline-root /tmp/tfx-taxi --train-steps 1000 --eval-steps 150 \\
        -- --direct_running_mode=multi_processing --direct_num_workers=2

CsvExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> Transform ->
Trainer -> (LatestBlessedModel resolver) -> Evaluator -> Pusher, with the same
module file as Conveyor's example (examples/taxi/taxi_utils.py: it imports only
TensorFlow, tf.Transform, tf_keras and tfx_bsl, so TFX loads it unchanged),
the same EvalConfig and thresholds, and TFX's defaults wherever Conveyor's
example uses its own defaults (2:1 hash split, SchemaGen inferring shapes).
MLMD is SQLite at <pipeline-root>/metadata.db; re-running on the same root
is TFX's cached re-run. With --components 3 only CsvExampleGen ->
StatisticsGen -> SchemaGen run (the twin of bench/scale.py's pipeline).

Conveyor's example also wires the latest TransformCache into Transform (an
analyzer cache). TFX's Transform writes that cache as well (its
`updated_analyzer_cache` output), but feeding it back needs a resolver whose
output changes after every run, which would defeat TFX's own node cache on the
re-run; a fresh root has no cache to feed either way, so it is left out here.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODULE_FILE = os.path.join(REPO, "examples", "taxi", "taxi_utils.py")


def create_pipeline(args: argparse.Namespace):  # -> tfx.dsl.Pipeline
    import tensorflow_model_analysis as tfma
    from tfx import v1 as tfx

    example_gen = tfx.components.CsvExampleGen(input_base=args.data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    components = [example_gen, statistics_gen, schema_gen]
    if args.components == "all":
        example_validator = tfx.components.ExampleValidator(
            statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
        )
        transform = tfx.components.Transform(
            examples=example_gen.outputs["examples"],
            schema=schema_gen.outputs["schema"],
            module_file=args.module_file,
        )
        trainer = tfx.components.Trainer(
            module_file=args.module_file,
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            train_args=tfx.proto.TrainArgs(num_steps=args.train_steps),
            eval_args=tfx.proto.EvalArgs(num_steps=args.eval_steps),
        )
        model_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        # The same EvalConfig as examples/taxi/pipeline.py.
        eval_config = tfma.EvalConfig(
            model_specs=[
                tfma.ModelSpec(
                    signature_name="serving_default",
                    label_key="tips_xf",
                    preprocessing_function_names=["transform_features"],
                )
            ],
            slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["trip_start_hour"])],
            metrics_specs=[
                tfma.MetricsSpec(
                    metrics=[
                        tfma.MetricConfig(class_name="ExampleCount"),
                        tfma.MetricConfig(
                            class_name="BinaryAccuracy",
                            per_slice_thresholds=[
                                tfma.PerSliceMetricThreshold(
                                    slicing_specs=[tfma.SlicingSpec()],
                                    threshold=tfma.MetricThreshold(
                                        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.6}),
                                        change_threshold=tfma.GenericChangeThreshold(
                                            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                            absolute={"value": -1e-10},
                                        ),
                                    ),
                                )
                            ],
                        ),
                    ]
                )
            ],
        )
        evaluator = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            baseline_model=model_resolver.outputs["model"],
            schema=schema_gen.outputs["schema"],
            eval_config=eval_config,
        )
        pusher = tfx.components.Pusher(
            model=trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=os.path.join(args.pipeline_root, "serving_model")
                )
            ),
        )
        components += [example_validator, transform, trainer, model_resolver, evaluator, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=args.name,
        pipeline_root=args.pipeline_root,
        components=components,
        enable_cache=not args.no_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(args.pipeline_root, "metadata.db")
        ),
        beam_pipeline_args=args.beam_args,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="a directory holding the CSV file(s)")
    parser.add_argument("--pipeline-root", required=True, help="outputs and metadata.db go here")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=150)
    parser.add_argument("--module-file", default=MODULE_FILE)
    parser.add_argument("--components", choices=["all", "3"], default="all",
                        help="all: the taxi pipeline; 3: CsvExampleGen -> StatisticsGen -> SchemaGen")
    parser.add_argument("--name", default="", help="pipeline name (default: tfx_taxi or tfx_scale)")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("beam_args", nargs="*", help="Beam flags for every Beam component (after --)")
    args = parser.parse_args(argv)
    args.data_root = os.path.abspath(args.data_root)
    args.pipeline_root = os.path.abspath(args.pipeline_root)
    args.module_file = os.path.abspath(args.module_file)
    args.name = args.name or ("tfx_taxi" if args.components == "all" else "tfx_scale")

    from tfx import v1 as tfx

    tfx.orchestration.LocalDagRunner().run(create_pipeline(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
