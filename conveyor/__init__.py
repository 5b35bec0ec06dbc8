"""Conveyor: TFX-style ML pipelines on Apache Beam, recorded in ML Metadata.

    from conveyor import Pipeline, LocalRunner
    from conveyor.components import CsvExampleGen, StatisticsGen, ...

Importing Conveyor, building and compiling a pipeline never import
TensorFlow, TFDV, TFT or TFMA.
"""

from __future__ import annotations

import os

# One Keras for every component: tf.Transform's layers are Keras 2 (tf_keras)
# and tf.Transform selects it on import. Set before anything touches tf.keras,
# so TFMA also sees Keras 2 models as Keras (and computes their compiled
# metrics) whichever library a process happens to import first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from conveyor import artifacts  # noqa: E402
from conveyor.errors import ConveyorError, ExecutorError, PipelineDefinitionError, RunFailedError  # noqa: E402
from conveyor.pipeline.dsl import Channel, Component, Input, Pipeline  # noqa: E402
from conveyor.pipeline.runner import LocalRunner, RunResult  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "Component",
    "ConveyorError",
    "ExecutorError",
    "Input",
    "LocalRunner",
    "Pipeline",
    "PipelineDefinitionError",
    "RunFailedError",
    "RunResult",
    "artifacts",
]
