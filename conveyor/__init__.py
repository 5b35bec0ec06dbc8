"""Conveyor: TFX-style ML pipelines on Apache Beam, recorded in ML Metadata.

    from conveyor import Pipeline, LocalRunner
    from conveyor.components import CsvExampleGen, StatisticsGen, ...

Importing Conveyor, building and compiling a pipeline never import
TensorFlow, TFDV, TFT or TFMA, and importing it changes nothing in the
process (no environment variables, no sys.path).
"""

from __future__ import annotations

from conveyor import artifacts
from conveyor.errors import ConveyorError, ExecutorError, PipelineDefinitionError, RunFailedError
from conveyor.pipeline.dsl import Channel, Component, Input, Pipeline
from conveyor.pipeline.runner import LocalRunner, RunResult

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
