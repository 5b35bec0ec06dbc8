"""Resolver and Importer nodes: their outputs come from MLMD (or an external
file), not from an executor. The orchestrator calls `resolve` in its own
thread and records the node as an execution linking the artifacts it chose."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from conveyor import fs
from conveyor.artifacts import ARTIFACT_TYPES, Artifact, Model, ModelBlessing
from conveyor.components.base import fingerprint_files
from conveyor.errors import ExecutorError, PipelineDefinitionError, closest
from conveyor.metadata.store import RESOLVER_TYPE_NAME
from conveyor.pipeline.dsl import Component, Input
from conveyor.secrets import redact

__all__ = ["Resolver", "LatestBlessedModel", "LatestArtifact", "PreviousSpan", "Importer"]


class Resolver(Component):
    """Base of nodes answered from MLMD. `md` is a conveyor.metadata.Metadata
    and `pipeline_context` the MLMD context of this pipeline."""

    KIND = "resolver"
    # The MLMD execution type, as TFX records every resolver: the store then
    # links the chosen artifacts as INTERNAL_OUTPUT, so no reader takes the
    # resolver for their producer.
    EXECUTION_TYPE: ClassVar[str | None] = RESOLVER_TYPE_NAME

    def resolve(self, md: Any, inputs: dict[str, list[Artifact]], pipeline_context: Any) -> dict[str, list[Artifact]]:
        raise NotImplementedError


def _check_artifact_type(node: Component) -> None:
    name = node.params.artifact_type
    if name not in ARTIFACT_TYPES:
        raise PipelineDefinitionError(
            f"{node._where()}: unknown artifact_type {name!r}.{closest(name, ARTIFACT_TYPES)} "
            f"Known: {sorted(ARTIFACT_TYPES)}."
        )


class LatestBlessedModel(Resolver):
    """The newest model this pipeline's Evaluator blessed, as the baseline for
    the next evaluation, and its blessing (`model_blessing`, as TFX's
    LatestBlessedModelStrategy gives both); empty when there is none yet.

    `candidate` is the model about to be evaluated: it is never its own
    baseline (comparing a model with itself says nothing), which also keeps a
    re-run with nothing changed fully cached.
    """

    INPUTS = {"candidate": Input(Model, optional=True)}
    OUTPUTS = {"model": Model, "model_blessing": ModelBlessing}

    def resolve(self, md: Any, inputs: dict[str, list[Artifact]], pipeline_context: Any) -> dict[str, list[Artifact]]:
        exclude = {a.id for a in inputs.get("candidate", [])}
        blessings = md.artifacts_of_type(ModelBlessing, pipeline_context.id)
        for blessing in sorted(blessings, key=lambda a: a.id or 0, reverse=True):
            model_id = blessing.get("current_model_id")
            if blessing.get("blessed") != 1 or model_id is None or model_id in exclude:
                continue
            models = md.artifacts_by_id([int(model_id)])
            if models:
                return {"model": models, "model_blessing": [blessing]}
        return {"model": [], "model_blessing": []}


@dataclasses.dataclass(frozen=True)
class LatestArtifactParams:
    artifact_type: str
    # Only artifacts output by this node id; any node of the pipeline when empty.
    producer: str = ""


class LatestArtifact(Resolver):
    """The newest LIVE artifact of `artifact_type` in this pipeline (from the
    node `producer` when given), e.g. Transform's analyzer cache of the last
    run; empty when there is none."""

    Params = LatestArtifactParams

    def check(self) -> None:
        _check_artifact_type(self)

    def output_types(self) -> dict[str, type[Artifact]]:
        return {"artifact": ARTIFACT_TYPES[self.params.artifact_type]}

    def resolve(self, md: Any, inputs: dict[str, list[Artifact]], pipeline_context: Any) -> dict[str, list[Artifact]]:
        cls = ARTIFACT_TYPES[self.params.artifact_type]
        candidates = md.artifacts_of_type(cls, pipeline_context.id)
        if self.params.producer:
            node = md.find_context("node", f"{pipeline_context.name}.{self.params.producer}")
            if node is None:
                return {"artifact": []}
            in_node = {a.id for a in md.artifacts_of_type(cls, node.id)}
            candidates = [a for a in candidates if a.id in in_node]
        candidates = [a for a in candidates if fs.exists(a.uri)]
        newest = max(candidates, key=lambda a: a.id or 0, default=None)
        return {"artifact": [newest] if newest else []}


class PreviousSpan(Resolver):
    """The artifact of the span before `current`'s: the newest LIVE artifact
    of the same type, from the same node, with a smaller `span` (e.g. the
    previous span's statistics, for ExampleValidator's drift check); empty
    for the first span.

        previous = PreviousSpan(current=statistics_gen.outputs["statistics"])
        ExampleValidator(..., previous_statistics=previous.outputs["artifact"])
    """

    INPUTS = {"current": Input(Artifact)}

    def output_types(self) -> dict[str, type[Artifact]]:
        return {"artifact": self.inputs["current"].type}

    def resolve(self, md: Any, inputs: dict[str, list[Artifact]], pipeline_context: Any) -> dict[str, list[Artifact]]:
        current = inputs.get("current") or []
        channel = self.inputs["current"]
        if not current or channel.producer is None:
            return {"artifact": []}
        span = int(current[0].get("span", 0) or 0)
        node = md.find_context("node", f"{pipeline_context.name}.{channel.producer.id}")
        if node is None:
            return {"artifact": []}
        earlier = [
            a for a in md.artifacts_of_type(channel.type, node.id)
            if int(a.get("span", 0) or 0) < span and fs.exists(a.uri)
        ]
        newest = max(earlier, key=lambda a: (int(a.get("span", 0) or 0), a.id or 0), default=None)
        return {"artifact": [newest] if newest else []}


@dataclasses.dataclass(frozen=True)
class ImporterParams:
    source_uri: str
    artifact_type: str
    # False: an artifact already imported from this uri is reused (keeps
    # downstream nodes cached); True: a new artifact every run.
    reimport: bool = False
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    custom_properties: dict[str, Any] = dataclasses.field(default_factory=dict)


class Importer(Resolver):
    """Brings an external file or directory in as a typed artifact (output
    `result`), e.g. a hand-curated schema or a pre-trained model."""

    Params = ImporterParams
    # It makes new artifacts: its own execution type, and OUTPUT events (as TFX's Importer).
    EXECUTION_TYPE = None

    def check(self) -> None:
        _check_artifact_type(self)

    def output_types(self) -> dict[str, type[Artifact]]:
        return {"result": ARTIFACT_TYPES[self.params.artifact_type]}

    def resolve(self, md: Any, inputs: dict[str, list[Artifact]], pipeline_context: Any) -> dict[str, list[Artifact]]:
        uri = fs.abspath(self.params.source_uri)
        if not fs.exists(uri):
            raise ExecutorError(
                f"{self.id}: source_uri {uri!r} does not exist. Importer expects an existing file or "
                f"directory to record as a {self.params.artifact_type}; fix the path."
            )
        cls = ARTIFACT_TYPES[self.params.artifact_type]
        fingerprint = _fingerprint_path(uri)
        if not self.params.reimport:
            # The same uri with the same content: reuse it, so downstream stays cached.
            same = [a for a in md.artifacts_of_type(cls) if a.uri == uri and a.get("fingerprint") == fingerprint]
            if same:
                return {"result": [max(same, key=lambda a: a.id or 0)]}
        custom = {**redact(self.params.custom_properties), "fingerprint": fingerprint}
        art = cls(uri, properties=self.params.properties, custom_properties=custom)
        return {"result": [art]}


def _fingerprint_path(path: str) -> str:
    """A content hash of a file, or of every file under a directory."""
    if fs.isfile(path):
        return fingerprint_files([path])
    files = [fs.join(path, rel) for rel in fs.walk_files(path)]
    return fingerprint_files(files) + f"-{len(files)}"
