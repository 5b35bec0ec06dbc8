"""Artifact types: what flows between components.

Each type keeps TFX's name, base type, properties and the custom properties
TFX's readers look for, so an MLMD store written by Conveyor reads like one
written by TFX (1.16). Each class documents the files under its URI.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from conveyor import fs

__all__ = [
    "Artifact",
    "Examples",
    "ExampleStatistics",
    "Schema",
    "ExampleAnomalies",
    "TransformGraph",
    "TransformCache",
    "Model",
    "ModelRun",
    "ModelEvaluation",
    "ModelBlessing",
    "PushedModel",
    "ARTIFACT_TYPES",
    "TFX_PAYLOAD_VERSION",
    "artifact_type",
    "split_uri",
]

# Property kinds MLMD can hold.
INT, STRING, DOUBLE = int, str, float

# The TFX release whose file layout Conveyor's artifacts follow (`Split-<name>`,
# `Format-Serving`, `FeatureStats.pb`, ...). Recorded as the custom property
# `tfx_version`: TFX's readers take an artifact without it for the pre-0.29
# layout and look for its files in the wrong places.
TFX_PAYLOAD_VERSION = "1.16.0"


class Artifact:
    """A typed file or directory under `uri`, recorded in MLMD.

    `properties` are the typed fields of the type (declared in PROPERTIES);
    `custom_properties` are free-form extras. CUSTOM_PROPERTIES declares the
    custom properties TFX writes (and its readers look for) on this type, with
    their kinds: `set` puts those among the custom properties, as TFX does.
    BASE_TYPE is the type's MLMD base type (ArtifactType.SystemDefinedBaseType).
    """

    TYPE_NAME: ClassVar[str] = "Artifact"
    BASE_TYPE: ClassVar[str | None] = None
    PROPERTIES: ClassVar[dict[str, type]] = {}
    CUSTOM_PROPERTIES: ClassVar[dict[str, type]] = {}

    def __init__(
        self,
        uri: str = "",
        *,
        id: int | None = None,  # noqa: A002 - MLMD's own name
        properties: dict[str, Any] | None = None,
        custom_properties: dict[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self.id = id
        self.properties: dict[str, Any] = {}
        self.custom_properties: dict[str, Any] = dict(custom_properties or {})
        for key, value in (properties or {}).items():
            self.set(key, value)

    def set(self, key: str, value: Any) -> None:
        """Set a declared field where TFX records it: a custom property when
        CUSTOM_PROPERTIES names it, a property otherwise; both when the type
        declares it as a property but TFX's readers look among the custom
        properties (Examples' `span` and `version`)."""
        if key not in self.PROPERTIES and key not in self.CUSTOM_PROPERTIES:
            raise KeyError(
                f"{self.TYPE_NAME} has no property {key!r}; its properties are "
                f"{sorted({**self.PROPERTIES, **self.CUSTOM_PROPERTIES})}. Use custom_properties for extras."
            )
        if key in self.CUSTOM_PROPERTIES:
            self.custom_properties[key] = self.CUSTOM_PROPERTIES[key](value)
        if key in self.PROPERTIES:
            self.properties[key] = self.PROPERTIES[key](value)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.properties:
            return self.properties[key]
        return self.custom_properties.get(key, default)

    def __repr__(self) -> str:
        return f"{self.TYPE_NAME}(id={self.id}, uri={self.uri!r})"

    def to_json(self) -> dict[str, Any]:
        """The artifact as plain JSON data (type name, uri, id, properties)."""
        return {
            "type": self.TYPE_NAME,
            "uri": self.uri,
            "id": self.id,
            "properties": dict(self.properties),
            "custom_properties": dict(self.custom_properties),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Artifact:
        """The artifact `to_json` described, of its registered type (or a
        plain Artifact subclass of that name for a type Conveyor does not know)."""
        cls = artifact_type(data["type"])
        art = cls(data.get("uri", ""), id=data.get("id"), custom_properties=data.get("custom_properties") or {})
        art.properties.update(data.get("properties") or {})
        return art


class _SplitsMixin:
    """Types that hold one sub-directory per split, named `Split-<name>`."""

    PROPERTIES: ClassVar[dict[str, type]]

    @property
    def splits(self) -> list[str]:
        raw = self.properties.get("split_names")  # type: ignore[attr-defined]
        return json.loads(raw) if raw else []

    @splits.setter
    def splits(self, names: list[str]) -> None:
        self.properties["split_names"] = json.dumps(list(names))  # type: ignore[attr-defined]


def split_uri(artifact: Artifact, split: str) -> str:
    """The directory of one split of a split artifact, as TFX lays it out."""
    return fs.join(artifact.uri, f"Split-{split}")


class Examples(_SplitsMixin, Artifact):
    """Rows of data, one directory per split.

    Files: `Split-<name>/data-NNNNN-of-NNNNN.<ext>`. The custom property
    `file_format` says which: `parquet` (the default, fastest to decode) or
    `tfrecords_gzip` (gzipped TFRecord of tf.Example, for interoperability).
    ExampleGen's Parquet has one flat column per feature (a missing value is
    a null); Transform's has the list columns tf.Transform converts its
    outputs to (`impl_helper.make_tensor_to_arrow_converter`).
    `span` and `version` are custom properties too (TFX's ExampleGen writes
    them there and its span resolvers read them there), and properties.
    """

    TYPE_NAME = "Examples"
    BASE_TYPE = "DATASET"
    PROPERTIES = {"span": INT, "version": INT, "split_names": STRING}
    CUSTOM_PROPERTIES = {"span": INT, "version": INT}


class ExampleStatistics(_SplitsMixin, Artifact):
    """TFDV statistics. Files: `Split-<name>/FeatureStats.pb`
    (a binary DatasetFeatureStatisticsList)."""

    TYPE_NAME = "ExampleStatistics"
    BASE_TYPE = "STATISTICS"
    PROPERTIES = {"span": INT, "split_names": STRING}


class Schema(Artifact):
    """A tensorflow_metadata Schema. Files: `schema.pbtxt` (text format)."""

    TYPE_NAME = "Schema"


class ExampleAnomalies(_SplitsMixin, Artifact):
    """TFDV anomalies against a schema. Files: `Split-<name>/SchemaDiff.pb`
    (a binary Anomalies proto)."""

    TYPE_NAME = "ExampleAnomalies"
    PROPERTIES = {"span": INT, "split_names": STRING}


class TransformGraph(Artifact):
    """A tf.Transform output. Files: `transform_fn/` (SavedModel),
    `transformed_metadata/schema.pbtxt`, readable with
    `tft.TFTransformOutput(uri)`."""

    TYPE_NAME = "TransformGraph"


class TransformCache(Artifact):
    """The tf.Transform analyzer cache, reused by the next run's Transform.
    Files: tf.Transform's own cache layout (one directory per dataset key)."""

    TYPE_NAME = "TransformCache"


class Model(Artifact):
    """A trained model. Files: `Format-Serving/` (a SavedModel that takes
    serialized tf.Example rows, the Transform graph included)."""

    TYPE_NAME = "Model"
    BASE_TYPE = "MODEL"


class ModelRun(Artifact):
    """What a training run leaves besides the model: logs and TensorBoard
    event files, anywhere under the URI."""

    TYPE_NAME = "ModelRun"


class ModelEvaluation(Artifact):
    """A TFMA evaluation. Files: TFMA's output (`metrics-*`, `plots-*`,
    `validations-*`, `eval_config.json`), readable with
    `tfma.load_eval_result(uri)`."""

    TYPE_NAME = "ModelEvaluation"


class ModelBlessing(Artifact):
    """The Evaluator's verdict. Files: an empty `BLESSED` or `NOT_BLESSED`.
    Custom properties, as TFX's: `blessed` 1 or 0; `current_model_id` /
    `current_model` and `baseline_model_id` / `baseline_model` (id and URI)
    name the models compared."""

    TYPE_NAME = "ModelBlessing"
    CUSTOM_PROPERTIES = {
        "blessed": INT,
        "current_model_id": INT,
        "current_model": STRING,
        "baseline_model_id": INT,
        "baseline_model": STRING,
    }


class PushedModel(Artifact):
    """A model pushed to serving. The URI holds nothing; the model itself is at
    `pushed_destination` (`<base_directory>/<pushed_version>/`). Custom
    property `pushed` (as TFX's) is 1 when the model was pushed, 0 when it was
    not blessed."""

    TYPE_NAME = "PushedModel"
    BASE_TYPE = "MODEL"
    CUSTOM_PROPERTIES = {"pushed": INT, "pushed_destination": STRING, "pushed_version": STRING}


def artifact_type(name: str) -> type[Artifact]:
    """The artifact class of a type name; a new Artifact subclass for a name
    Conveyor does not know (e.g. a custom type in a TFX store)."""
    cls = ARTIFACT_TYPES.get(name)
    if cls is None:
        cls = type(name, (Artifact,), {"TYPE_NAME": name})
        ARTIFACT_TYPES[name] = cls
    return cls


ARTIFACT_TYPES: dict[str, type[Artifact]] = {
    cls.TYPE_NAME: cls
    for cls in (
        Examples,
        ExampleStatistics,
        Schema,
        ExampleAnomalies,
        TransformGraph,
        TransformCache,
        Model,
        ModelRun,
        ModelEvaluation,
        ModelBlessing,
        PushedModel,
    )
}
