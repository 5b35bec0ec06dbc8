"""Evaluator: real TFMA runs of the taxi test model on the taxi eval split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conveyor.artifacts import Examples, Model, ModelBlessing, ModelEvaluation, Schema
from conveyor.components import evaluator as ev
from conveyor.components.base import ExecutionContext
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TAXI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "taxi")
MODEL_URI = os.path.join(TAXI, "trainer", "model")
MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def taxi_examples() -> Examples:
    with open(os.path.join(TAXI, "example_gen", "examples.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    return Examples(
        os.path.join(TAXI, "example_gen", "examples"),
        id=1,
        properties=recorded["properties"],
        custom_properties=recorded["custom_properties"],
    )


def taxi_config(
    *, lower_bound: float | None = 0.6, change_absolute: float | None = -1e-10, overall_only: bool = True
) -> ev.EvalConfig:
    """TFX's taxi EvalConfig. With `overall_only` the thresholds apply to the
    overall slice only (a plain `threshold` applies to every hour slice too)."""
    threshold = ev.MetricThreshold(
        value_threshold=ev.GenericValueThreshold(lower_bound=lower_bound)
        if lower_bound is not None
        else None,
        change_threshold=(
            ev.GenericChangeThreshold(direction=ev.HIGHER_IS_BETTER, absolute=change_absolute)
            if change_absolute is not None
            else None
        ),
    )
    if lower_bound is None and change_absolute is None:
        metric = ev.MetricConfig(class_name="BinaryAccuracy")
    elif overall_only:
        metric = ev.MetricConfig(
            class_name="BinaryAccuracy",
            per_slice_thresholds=[
                ev.PerSliceMetricThreshold(slicing_specs=[ev.SlicingSpec()], threshold=threshold)
            ],
        )
    else:
        metric = ev.MetricConfig(class_name="BinaryAccuracy", threshold=threshold)
    return ev.EvalConfig(
        model_specs=[
            ev.ModelSpec(
                signature_name="serving_default",
                label_key="tips_xf",
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[ev.SlicingSpec(), ev.SlicingSpec(feature_keys=["trip_start_hour"])],
        metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig(class_name="ExampleCount"), metric])],
    )


def run_evaluator(tmp_path, config, *, baseline: Model | None = None, args=(), splits=("eval",)):
    evaluation = ModelEvaluation(str(tmp_path / "evaluation"), id=10)
    blessing = ModelBlessing(str(tmp_path / "blessing"), id=11)
    os.makedirs(evaluation.uri)
    os.makedirs(blessing.uri)
    inputs = {
        "examples": [taxi_examples()],
        "model": [Model(MODEL_URI, id=2)],
        "baseline_model": [baseline] if baseline else [],
        "schema": [Schema(os.path.join(TAXI, "schema_gen", "schema"), id=3)],
    }
    verdict = ev.run(
        inputs,
        {"evaluation": [evaluation], "blessing": [blessing]},
        ev.EvaluatorParams(eval_config=config, example_splits=list(splits)),
        ExecutionContext("evaluator", beam_pipeline_args=list(args)),
    )
    return evaluation, blessing, verdict


def overall_metrics(evaluation: ModelEvaluation) -> dict[str, float]:
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation.uri)
    overall = [m for key, m in result.slicing_metrics if key == ()]
    assert len(overall) == 1
    hours = [key for key, _ in result.slicing_metrics if key and key[0][0] == "trip_start_hour"]
    assert len(hours) == 24  # The hour slice spec gave one slice per hour.
    return {name: v["doubleValue"] for name, v in overall[0][""][""].items()}


def test_passing_threshold_blesses_first_model(tmp_path):
    # No baseline yet: the change threshold is skipped and the value threshold decides.
    evaluation, blessing, verdict = run_evaluator(tmp_path, taxi_config(lower_bound=0.6))
    metrics = overall_metrics(evaluation)
    assert metrics["example_count"] == 5066
    assert metrics["binary_accuracy"] >= 0.6
    assert os.listdir(blessing.uri) == ["BLESSED"]
    assert blessing.get("blessed") == 1
    # TFX's custom properties, typed as its readers read them (blessed: int_value).
    assert blessing.properties == {}
    assert blessing.custom_properties == {"blessed": 1, "current_model_id": 2, "current_model": MODEL_URI}
    assert "baseline_model_id" not in blessing.custom_properties
    assert verdict == "BLESSED (no baseline model yet: change thresholds skipped)"


def test_impossible_thresholds_are_not_blessed_multi_processing(tmp_path):
    # accuracy >= 1.1 cannot hold; nor can +0.01 accuracy over an identical baseline.
    # A plain `threshold` is checked on every slice, the hour slices included.
    config = taxi_config(lower_bound=1.1, change_absolute=0.01, overall_only=False)
    evaluation, blessing, verdict = run_evaluator(
        tmp_path, config, baseline=Model(MODEL_URI, id=7), args=MULTI_PROCESS
    )
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    assert blessing.get("blessed") == 0
    assert blessing.custom_properties["blessed"] == 0 and blessing.properties == {}
    metrics = overall_metrics(evaluation)  # Metrics are still written.
    assert metrics["binary_accuracy"] < 1.1 and metrics["binary_accuracy_diff"] == 0.0
    assert verdict.startswith("NOT_BLESSED: binary_accuracy=") and "on slice Overall" in verdict
    assert "lower_bound { value: 1.1 }" in verdict and "binary_accuracy_diff=0 " in verdict
    assert "change_threshold" in verdict and "trip_start_hour=" in verdict


def test_baseline_with_passing_change_threshold(tmp_path):
    # The same model as its own baseline: the diff is 0, within absolute=-1e-10.
    evaluation, blessing, verdict = run_evaluator(
        tmp_path, taxi_config(lower_bound=0.6), baseline=Model(MODEL_URI, id=7)
    )
    assert overall_metrics(evaluation)["binary_accuracy_diff"] == 0.0
    assert os.listdir(blessing.uri) == ["BLESSED"]
    assert blessing.get("blessed") == 1
    assert blessing.custom_properties["baseline_model_id"] == 7
    assert blessing.custom_properties["baseline_model"] == MODEL_URI
    assert blessing.custom_properties["current_model_id"] == 2


def test_no_thresholds_never_blesses(tmp_path):
    import tensorflow_model_analysis as tfma

    # A real tfma.EvalConfig proto works as well as the dataclasses.
    config = tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(label_key="tips_xf", preprocessing_function_names=["transform_features"])
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="BinaryAccuracy")])],
    )
    evaluation, blessing, verdict = run_evaluator(tmp_path, config)
    assert (
        0
        < tfma.load_eval_result(evaluation.uri).slicing_metrics[0][1][""][""]["binary_accuracy"][
            "doubleValue"
        ]
        <= 1
    )
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    assert verdict.startswith("NOT_BLESSED: eval_config has no thresholds")


def test_missing_split_fails_before_writing(tmp_path):
    with pytest.raises(ExecutorError) as e:
        run_evaluator(tmp_path, taxi_config(), splits=("test",))
    assert "split 'test'" in str(e.value) and "['train', 'eval']" in str(e.value)
    assert os.listdir(tmp_path / "evaluation") == [] and os.listdir(tmp_path / "blessing") == []


def test_model_without_saved_model_fails_before_writing(tmp_path):
    evaluation = ModelEvaluation(str(tmp_path / "evaluation"))
    blessing = ModelBlessing(str(tmp_path / "blessing"))
    os.makedirs(evaluation.uri)
    os.makedirs(blessing.uri)
    with pytest.raises(ExecutorError, match="no SavedModel at .*Format-Serving"):
        ev.run(
            {"examples": [taxi_examples()], "model": [Model(str(tmp_path))]},
            {"evaluation": [evaluation], "blessing": [blessing]},
            ev.EvaluatorParams(eval_config=taxi_config()),
            ExecutionContext("evaluator"),
        )
    assert os.listdir(evaluation.uri) == [] and os.listdir(blessing.uri) == []


# -- construction ----------------------------------------------------------------------


def test_building_with_dataclass_config_does_not_import_tensorflow():
    code = textwrap.dedent(
        """
        import sys
        from conveyor.artifacts import Examples, Model
        from conveyor.pipeline.dsl import Channel
        from conveyor.components import evaluator as ev, pusher
        threshold = ev.MetricThreshold(value_threshold=ev.GenericValueThreshold(lower_bound=0.6))
        cfg = ev.EvalConfig(
            model_specs=[ev.ModelSpec(label_key="tips_xf")],
            metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig("BinaryAccuracy", threshold=threshold)])],
        )
        e = ev.Evaluator(examples=Channel(Examples), model=Channel(Model), eval_config=cfg)
        pusher.Pusher(model=Channel(Model), model_blessing=e.outputs["blessing"], base_directory="/tmp/x")
        assert e.has_thresholds()
        heavy = [m for m in ("tensorflow", "tensorflow_model_analysis", "apache_beam") if m in sys.modules]
        print("heavy:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "heavy: []" in out


def test_has_thresholds_and_config_checks():
    examples, model = Channel(Examples), Channel(Model)
    no_thresholds = taxi_config(lower_bound=None, change_absolute=None)
    plain = ev.Evaluator(examples=examples, model=model, eval_config=no_thresholds)
    assert not plain.has_thresholds()
    valued = ev.Evaluator(examples=examples, model=model, eval_config=taxi_config(change_absolute=None))
    assert valued.has_thresholds() and not valued.has_change_thresholds()

    # A change threshold needs a baseline_model input to ever be checked.
    with pytest.raises(PipelineDefinitionError, match="change thresholds but no 'baseline_model'"):
        ev.Evaluator(examples=examples, model=model, eval_config=taxi_config())
    both = ev.Evaluator(
        examples=examples, model=model, baseline_model=Channel(Model), eval_config=taxi_config()
    )
    assert both.has_change_thresholds()

    with pytest.raises(PipelineDefinitionError, match="expects conveyor.components.evaluator.EvalConfig"):
        ev.Evaluator(examples=examples, model=model, eval_config={"metrics": "auc"})
    with pytest.raises(PipelineDefinitionError, match="has no metrics"):
        ev.Evaluator(examples=examples, model=model, eval_config=ev.EvalConfig())
    with pytest.raises(PipelineDefinitionError, match="GenericValueThreshold without bounds"):
        ev.Evaluator(
            examples=examples,
            model=model,
            eval_config=ev.EvalConfig(
                metrics_specs=[
                    ev.MetricsSpec(
                        metrics=[
                            ev.MetricConfig(
                                "AUC",
                                threshold=ev.MetricThreshold(value_threshold=ev.GenericValueThreshold()),
                            )
                        ]
                    )
                ]
            ),
        )


def test_tfma_proto_config_thresholds_are_seen():
    import tensorflow_model_analysis as tfma

    config = tfma.EvalConfig(
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name="AUC",
                        threshold=tfma.MetricThreshold(
                            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.5})
                        ),
                    )
                ]
            )
        ]
    )
    evaluator = ev.Evaluator(examples=Channel(Examples), model=Channel(Model), eval_config=config)
    assert evaluator.has_thresholds() and not evaluator.has_change_thresholds()
    converted = ev.to_tfma_eval_config(taxi_config())
    assert converted.metrics_specs[0].metrics[1].per_slice_thresholds[
        0
    ].threshold.change_threshold.absolute.value == (pytest.approx(-1e-10))
    assert converted.model_specs[0].preprocessing_function_names == ["transform_features"]
