"""Pusher: copies a blessed model to a serving directory, TensorFlow Serving
style (`<base_directory>/<version>/saved_model.pb`, version an integer).

The copy is made in a hidden temporary directory inside `base_directory` and
then renamed into place, so a model server watching the directory never sees a
half-copied model. A model that is not blessed is not copied.
"""

from __future__ import annotations

import dataclasses
import time

from conveyor import fs
from conveyor.artifacts import Artifact, Model, ModelBlessing, PushedModel
from conveyor.components.base import ExecutionContext
from conveyor.components.evaluator import BLESSED_FILE, NOT_BLESSED_FILE, SERVING_MODEL_DIR, Evaluator
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component, Input

__all__ = ["Filesystem", "PushDestination", "Pusher", "PusherParams", "run"]


@dataclasses.dataclass(frozen=True)
class Filesystem:
    """A directory watched by a model server: each version in `<base_directory>/<version>/`."""

    base_directory: str


@dataclasses.dataclass(frozen=True)
class PushDestination:
    """Where to push, as TFX's PushDestination (only the filesystem kind)."""

    filesystem: Filesystem

    Filesystem = Filesystem  # TFX spelling: PushDestination.Filesystem(base_directory=...)


@dataclasses.dataclass(frozen=True)
class PusherParams:
    # Give exactly one of the two; base_directory is the short form.
    push_destination: PushDestination | None = None
    base_directory: str = ""

    def destination(self) -> str:
        return (
            self.push_destination.filesystem.base_directory if self.push_destination else self.base_directory
        )


class Pusher(Component):
    """Pushes `model` to `<base_directory>/<version>/` when `model_blessing`
    blesses it. `pushed_model` records the result in TFX's custom properties:
    `pushed` 1 or 0, and `pushed_destination` / `pushed_version` of the copy."""

    INPUTS = {"model": Input(Model), "model_blessing": Input(ModelBlessing)}
    OUTPUTS = {"pushed_model": PushedModel}
    Params = PusherParams
    EXECUTOR = "conveyor.components.pusher:run"

    def staging_paths(self, params: dict, execution_id: int) -> list[str]:
        """Where a push by this execution stages a copy before renaming it into
        place (a crash leaves it behind; `conveyor run` removes it)."""
        destination = params.get("base_directory") or (
            (params.get("push_destination") or {}).get("filesystem") or {}
        ).get("base_directory")
        if not destination or fs.is_remote(destination):
            return []
        return fs.glob(fs.join(fs.abspath(destination), f".*.incomplete-{execution_id}"))

    def check(self) -> None:
        p = self.params
        if (p.push_destination is None) == (not p.base_directory):
            raise PipelineDefinitionError(
                f"{self._where()} needs exactly one of push_destination=PushDestination("
                f"filesystem=Filesystem(base_directory=...)) or base_directory='...'; got "
                f"push_destination={p.push_destination!r}, base_directory={p.base_directory!r}."
            )
        if not p.destination():
            raise PipelineDefinitionError(f"{self._where()} push destination base_directory is empty.")
        producer = self.inputs["model_blessing"].producer
        if isinstance(producer, Evaluator) and not producer.has_thresholds():
            raise PipelineDefinitionError(
                f"{self._where()} takes model_blessing from Evaluator {producer.id!r}, whose "
                f"eval_config has no thresholds: an Evaluator without thresholds never blesses a "
                f"model, so {self.id!r} would never push. Add a MetricThreshold (value_threshold "
                f"and/or change_threshold) to a MetricConfig of {producer.id!r}'s eval_config."
            )


def _next_version(base: str) -> int:
    """A Unix timestamp in seconds, TFX's version; the next free integer when a
    push in the same second took it."""
    version = int(time.time())
    while fs.exists(fs.join(base, str(version))):
        version += 1
    return version


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: PusherParams,
    ctx: ExecutionContext,
) -> str:
    models, blessings = inputs.get("model") or [], inputs.get("model_blessing") or []
    if len(models) != 1 or len(blessings) != 1:
        raise ctx.error(
            f"Pusher needs exactly one model and one model_blessing, got {len(models)} and {len(blessings)}."
        )
    model, blessing = models[0], blessings[0]
    pushed = outputs["pushed_model"][0]
    source = fs.join(model.uri, SERVING_MODEL_DIR)
    if not fs.isfile(fs.join(source, "saved_model.pb")):
        raise ctx.error(
            f"model {model!r} has no SavedModel at {source} (expected {SERVING_MODEL_DIR}/saved_model.pb, "
            f"as the Trainer writes it). Pass model= a Trainer's 'model' output."
        )
    blessed = _is_blessed(blessing, ctx)
    blessed_id = blessing.get("current_model_id")
    if blessed_id is not None and model.id is not None and int(blessed_id) != int(model.id):
        raise ctx.error(
            f"model_blessing {blessing!r} is about model id {blessed_id}, but the model to push is "
            f"{model!r}. Wire model= and the Evaluator's model= to the same Trainer output."
        )
    if not blessed:
        pushed.set("pushed", 0)
        # The orchestrator shows the returned note next to the component's state.
        return f"not pushed: model not blessed (blessing {blessing.uri})"

    base = fs.abspath(params.destination())
    fs.makedirs(base)
    version = _next_version(base)
    if fs.is_remote(base):
        target = _push_to_object_store(source, base, version)
    else:
        target = _push_to_disk(source, base, version, ctx)
    pushed.set("pushed", 1)
    pushed.set("pushed_destination", target)
    pushed.set("pushed_version", str(version))
    return f"pushed model {model.uri} to {target}"


def _push_to_disk(source: str, base: str, version: int, ctx: ExecutionContext) -> str:
    staging = fs.join(base, f".{version}.incomplete-{ctx.execution_id}")
    fs.rmtree(staging)
    try:
        fs.copytree(source, staging)
        # A stopped run pushes nothing: MLMD will say this was never pushed.
        ctx.check_cancelled()
        # A rename within one directory is atomic: a server never sees a partial model.
        while True:
            target = fs.join(base, str(version))
            if not fs.exists(target):
                fs.rename(staging, target)
                return target
            version += 1  # Another push took this version meanwhile.
    except BaseException:
        fs.rmtree(staging)
        raise


def _push_to_object_store(source: str, base: str, version: int) -> str:
    """An object store has no rename: the model's objects are copied into
    the version's prefix with `saved_model.pb` last, so a server polling
    `base` finds a loadable SavedModel there only once every variable file
    is in place. A failed copy removes what it wrote."""
    target = fs.join(base, str(version))
    try:
        fs.copytree(source, target, last=["saved_model.pb"])
    except BaseException:
        fs.rmtree(target)
        raise
    return target


def _is_blessed(blessing: Artifact, ctx: ExecutionContext) -> bool:
    """The Evaluator's verdict; the marker file and the property must agree."""
    has_blessed = fs.exists(fs.join(blessing.uri, BLESSED_FILE))
    has_not_blessed = fs.exists(fs.join(blessing.uri, NOT_BLESSED_FILE))
    if has_blessed == has_not_blessed:
        raise ctx.error(
            f"model_blessing {blessing!r} must hold exactly one of {BLESSED_FILE} and "
            f"{NOT_BLESSED_FILE} under {blessing.uri}; pass an Evaluator's 'blessing' output."
        )
    flag = blessing.get("blessed")
    if flag is not None and bool(int(flag)) != has_blessed:
        raise ctx.error(
            f"model_blessing {blessing!r} says blessed={flag} but holds "
            f"{BLESSED_FILE if has_blessed else NOT_BLESSED_FILE}; the artifact is inconsistent."
        )
    return has_blessed
