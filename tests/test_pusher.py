"""Pusher: copies only blessed models, atomically, to <base>/<version>/."""

from __future__ import annotations

import json
import os
import time

import pytest

from conveyor.artifacts import Examples, Model, ModelBlessing, PushedModel
from conveyor.components import evaluator as ev
from conveyor.components import pusher
from conveyor.components.base import ExecutionContext
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline.dsl import Channel

TAXI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "taxi")
MODEL_URI = os.path.join(TAXI, "trainer", "model")
BLESSING_URI = os.path.join(TAXI, "evaluator", "blessing")


def evaluator_blessing() -> ModelBlessing:
    """The Evaluator's real verdict on the test model (tests/testdata/make_evaluator.py)."""
    with open(os.path.join(TAXI, "evaluator", "blessing.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    return ModelBlessing(
        BLESSING_URI, id=5, properties=recorded["properties"], custom_properties=recorded["custom_properties"]
    )


def not_blessed(tmp_path) -> ModelBlessing:
    """A NOT_BLESSED verdict as the Evaluator writes it."""
    uri = tmp_path / "blessing"
    uri.mkdir()
    (uri / ev.NOT_BLESSED_FILE).touch()
    return ModelBlessing(str(uri), id=6, properties={"blessed": 0}, custom_properties={"current_model_id": 2})


def run_pusher(tmp_path, blessing: ModelBlessing, params: pusher.PusherParams) -> tuple[PushedModel, str]:
    out = PushedModel(str(tmp_path / "pushed_model"))
    os.makedirs(out.uri)
    message = pusher.run(
        {"model": [Model(MODEL_URI, id=2)], "model_blessing": [blessing]},
        {"pushed_model": [out]},
        params,
        ExecutionContext("pusher"),
    )
    return out, message


def test_blessed_model_is_pushed_to_a_new_version(tmp_path):
    import tensorflow as tf

    blessing = evaluator_blessing()
    assert os.listdir(BLESSING_URI) == [ev.BLESSED_FILE] and blessing.get("blessed") == 1
    base = tmp_path / "serving"
    params = pusher.PusherParams(
        push_destination=pusher.PushDestination(filesystem=pusher.Filesystem(base_directory=str(base)))
    )
    before = int(time.time())
    pushed, message = run_pusher(tmp_path, blessing, params)

    version = pushed.get("pushed_version")
    assert pushed.get("pushed") == 1
    # TFX's custom properties (none of them a typed property of PushedModel).
    assert pushed.properties == {}
    assert pushed.custom_properties == {
        "pushed": 1, "pushed_destination": str(base / version), "pushed_version": version
    }
    assert before <= int(version) <= int(time.time())
    assert pushed.get("pushed_destination") == str(base / version)
    assert os.listdir(base) == [version]  # No temporary directory left behind.
    assert "pushed model" in message and str(base / version) in message
    loaded = tf.saved_model.load(str(base / version))
    assert {"serving_default", "transform_features"} <= set(loaded.signatures)

    # A second push in the same second gets the next free version.
    again, _ = run_pusher(tmp_path / "again", blessing, pusher.PusherParams(base_directory=str(base)))
    assert int(again.get("pushed_version")) > int(version)
    assert sorted(os.listdir(base)) == sorted([version, again.get("pushed_version")])
    assert os.path.isfile(os.path.join(again.get("pushed_destination"), "saved_model.pb"))


def test_not_blessed_model_is_not_pushed(tmp_path):
    base = tmp_path / "serving"
    pushed, message = run_pusher(
        tmp_path, not_blessed(tmp_path), pusher.PusherParams(base_directory=str(base))
    )
    assert pushed.get("pushed") == 0
    assert pushed.get("pushed_destination") is None
    assert pushed.custom_properties == {"pushed": 0} and pushed.properties == {}
    assert not base.exists() or os.listdir(base) == []
    assert message.startswith("not pushed: model not blessed")


def test_blessing_of_another_model_is_refused(tmp_path):
    blessing = not_blessed(tmp_path)
    blessing.custom_properties["current_model_id"] = 99
    with pytest.raises(ExecutorError, match="about model id 99"):
        run_pusher(tmp_path, blessing, pusher.PusherParams(base_directory=str(tmp_path / "serving")))


def test_blessing_written_by_an_older_conveyor_is_read(tmp_path):
    # Older Conveyor stores hold `blessed` as a typed property: still read.
    blessing = not_blessed(tmp_path)
    del blessing.custom_properties["blessed"]
    blessing.properties["blessed"] = 1
    with pytest.raises(ExecutorError, match="says blessed=1 but holds NOT_BLESSED"):
        run_pusher(tmp_path, blessing, pusher.PusherParams(base_directory=str(tmp_path / "serving")))


def test_inconsistent_blessing_is_refused(tmp_path):
    blessing = not_blessed(tmp_path)
    blessing.set("blessed", 1)
    with pytest.raises(ExecutorError, match="says blessed=1 but holds NOT_BLESSED"):
        run_pusher(tmp_path, blessing, pusher.PusherParams(base_directory=str(tmp_path / "serving")))
    assert not (tmp_path / "serving").exists()


# -- construction ----------------------------------------------------------------------


def _evaluator(threshold: ev.MetricThreshold | None) -> ev.Evaluator:
    config = ev.EvalConfig(
        model_specs=[ev.ModelSpec(label_key="tips_xf")],
        metrics_specs=[ev.MetricsSpec(metrics=[ev.MetricConfig("BinaryAccuracy", threshold=threshold)])],
    )
    return ev.Evaluator(examples=Channel(Examples), model=Channel(Model), eval_config=config, id="my_eval")


def test_evaluator_without_thresholds_is_a_definition_error():
    evaluator = _evaluator(None)
    with pytest.raises(PipelineDefinitionError) as e:
        pusher.Pusher(
            model=Channel(Model),
            model_blessing=evaluator.outputs["blessing"],
            base_directory="/srv",
            id="push",
        )
    msg = str(e.value)
    assert "'push'" in msg and "'my_eval'" in msg
    assert "never blesses" in msg and "MetricThreshold" in msg

    ok = _evaluator(ev.MetricThreshold(value_threshold=ev.GenericValueThreshold(lower_bound=0.5)))
    pusher.Pusher(model=Channel(Model), model_blessing=ok.outputs["blessing"], base_directory="/srv")


def test_destination_must_be_given_once():
    blessing = Channel(ModelBlessing)
    with pytest.raises(PipelineDefinitionError, match="exactly one of push_destination"):
        pusher.Pusher(model=Channel(Model), model_blessing=blessing)
    with pytest.raises(PipelineDefinitionError, match="exactly one of push_destination"):
        pusher.Pusher(
            model=Channel(Model),
            model_blessing=blessing,
            base_directory="/a",
            push_destination=pusher.PushDestination(filesystem=pusher.Filesystem(base_directory="/b")),
        )
    with pytest.raises(PipelineDefinitionError, match="missing its required input 'model_blessing'"):
        pusher.Pusher(model=Channel(Model), base_directory="/a")
    # TFX's spelling works too.
    tfx_style = pusher.PushDestination(filesystem=pusher.PushDestination.Filesystem(base_directory="/b"))
    built = pusher.Pusher(model=Channel(Model), model_blessing=blessing, push_destination=tfx_style)
    assert built.params.destination() == "/b"


def test_a_stopped_run_pushes_nothing(tmp_path):
    base = str(tmp_path / "serving")
    ctx = ExecutionContext("pusher", execution_id=9)
    ctx.cancelled.set()  # the run was stopped while the Pusher copied the model
    with pytest.raises(ExecutorError, match="the run was stopped"):
        pusher.run(
            {"model": [Model(MODEL_URI, id=2)], "model_blessing": [evaluator_blessing()]},
            {"pushed_model": [PushedModel(str(tmp_path / "pushed"))]},
            pusher.PusherParams(base_directory=base), ctx,
        )
    assert os.listdir(base) == []  # no version, and no staging copy left
