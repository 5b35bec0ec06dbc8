"""The Evaluator's batch path (conveyor.components.fast_eval) against TFMA's
own Beam path, both real, on the taxi test model and eval split: the same
metric keys and values per slice (the model's compiled Keras metrics
included), the same validation result, eval_config.json and blessing."""

from __future__ import annotations

import json
import os

import pytest

from conveyor.components import evaluator as ev
from conveyor.components import fast_eval
from tests.test_evaluator import run_evaluator, taxi_config


def _metrics(uri: str) -> dict[tuple[str, str], float]:
    import tensorflow_model_analysis as tfma

    values = {}
    for record in tfma.load_metrics(uri):
        for item in record.metric_keys_and_values:
            key = (str(record.slice_key), str(item.key))
            assert key not in values
            values[key] = item.value.double_value.value
    return values


def _slices(uri: str, kind: str) -> list[str]:
    import tensorflow as tf
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    message = {"plots": metrics_for_slice_pb2.PlotsForSlice,
               "attributions": metrics_for_slice_pb2.AttributionsForSlice}[kind]
    path = os.path.join(uri, f"{kind}-00000-of-00001.tfrecord")
    return sorted(str(message.FromString(r)) for r in tf.compat.v1.io.tf_record_iterator(path))


def _validation(uri: str):
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(uri)
    per_slice = sorted(result.metric_validations_per_slice, key=str)
    del result.metric_validations_per_slice[:]
    result.metric_validations_per_slice.extend(per_slice)
    return result


def _both(tmp_path, monkeypatch, config):
    (tmp_path / "fast").mkdir()
    (tmp_path / "tfma").mkdir()
    monkeypatch.delenv(ev.TFMA_ONLY_ENV, raising=False)
    fast = run_evaluator(tmp_path / "fast", config)
    monkeypatch.setenv(ev.TFMA_ONLY_ENV, "1")
    tfma_run = run_evaluator(tmp_path / "tfma", config)
    return fast, tfma_run


def _assert_same(fast, tfma_run, *, blessed: bool) -> None:
    (f_eval, f_bless, f_verdict), (t_eval, t_bless, t_verdict) = fast, tfma_run
    ours, theirs = _metrics(f_eval.uri), _metrics(t_eval.uri)
    assert set(ours) == set(theirs)
    assert len({slice_key for slice_key, _ in theirs}) == 25  # overall and 24 hours
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert _slices(f_eval.uri, "plots") == _slices(t_eval.uri, "plots")
    assert _slices(f_eval.uri, "attributions") == _slices(t_eval.uri, "attributions")
    assert _validation(f_eval.uri) == _validation(t_eval.uri)
    with open(os.path.join(f_eval.uri, "eval_config.json")) as f1, \
            open(os.path.join(t_eval.uri, "eval_config.json")) as f2:
        assert json.load(f1) == json.load(f2)
    assert f_verdict == t_verdict
    assert sorted(os.listdir(f_bless.uri)) == sorted(os.listdir(t_bless.uri))
    assert f_bless.custom_properties == t_bless.custom_properties
    assert (f_bless.get("blessed") == 1) is blessed


def test_taxi_config_matches_tfma(tmp_path, monkeypatch):
    fast, tfma_run = _both(tmp_path, monkeypatch, taxi_config(lower_bound=0.6, change_absolute=None))
    _assert_same(fast, tfma_run, blessed=True)
    names = {key for _, key in _metrics(fast[0].uri)}
    # The spec's metrics and the model's compiled ones (TFMA adds those for a Keras model).
    assert any('name: "example_count"' in n for n in names)
    assert any('name: "auc"' in n for n in names) and any('name: "loss"' in n for n in names)


def test_failing_per_slice_thresholds_and_more_metrics_match_tfma(tmp_path, monkeypatch):
    # A bound some hour slices miss: the failures, slice by slice, must be TFMA's.
    threshold = ev.MetricThreshold(value_threshold=ev.GenericValueThreshold(lower_bound=0.9))
    config = ev.EvalConfig(
        model_specs=taxi_config().model_specs,
        slicing_specs=[ev.SlicingSpec(), ev.SlicingSpec(feature_keys=["trip_start_hour"])],
        metrics_specs=[ev.MetricsSpec(metrics=[
            ev.MetricConfig(class_name="ExampleCount"),
            ev.MetricConfig(class_name="BinaryAccuracy", threshold=threshold),
            ev.MetricConfig(class_name="Precision"),
            ev.MetricConfig(class_name="Recall"),
            ev.MetricConfig(class_name="FalseNegatives"),
        ])],
    )
    fast, tfma_run = _both(tmp_path, monkeypatch, config)
    _assert_same(fast, tfma_run, blessed=False)
    assert fast[2].startswith("NOT_BLESSED: binary_accuracy=")


def test_unsupported_configs_go_to_tfma():
    import tensorflow_model_analysis as tfma

    def reason(**kw):
        config = ev.to_tfma_eval_config(ev.EvalConfig(model_specs=[ev.ModelSpec(label_key="y")], **kw))
        config = tfma.utils.update_eval_config_with_defaults(config)
        return fast_eval.unsupported_reason(config, file_format="parquet")

    assert reason(metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig(class_name="BinaryAccuracy")])]) is None
    assert reason(metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig(class_name="AUC")])]) == "metric AUC"
    assert "arguments" in reason(metrics_specs=[ev.MetricsSpec(metrics=[
        ev.MetricConfig(class_name="BinaryAccuracy", config={"threshold": 0.3})])])
    with_baseline = tfma.utils.update_eval_config_with_defaults(
        ev.to_tfma_eval_config(ev.EvalConfig(
            model_specs=[ev.ModelSpec(label_key="y")],
            metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig(class_name="BinaryAccuracy")])])),
        has_baseline=True)
    assert fast_eval.unsupported_reason(with_baseline, file_format="parquet") is not None
    ok = tfma.utils.update_eval_config_with_defaults(ev.to_tfma_eval_config(ev.EvalConfig(
        model_specs=[ev.ModelSpec(label_key="y")],
        metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig(class_name="ExampleCount")])])))
    assert fast_eval.unsupported_reason(ok, file_format="tfrecords_gzip") is not None
