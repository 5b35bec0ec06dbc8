"""The pipeline as a serializable intermediate representation (JSON): what
`conveyor compile` prints and what a remote orchestrator would consume."""

from __future__ import annotations

import json
from typing import Any

from conveyor.pipeline.dsl import Pipeline, to_jsonable
from conveyor.secrets import redact, redact_args

__all__ = ["compile_pipeline", "to_json"]

IR_VERSION = 1


def compile_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    nodes = []
    for c in pipeline.components:
        cls = type(c)
        executor = c.EXECUTOR if isinstance(c.EXECUTOR, str) else f"{cls.__module__}.{cls.__qualname__}"
        nodes.append(
            {
                "id": c.id,
                "component": c.type_name(),
                "version": cls.VERSION,
                "kind": c.KIND,
                "executor": executor,
                "inputs": {
                    key: {
                        "type": ch.type.TYPE_NAME,
                        "producer": ch.producer.id if ch.producer else None,
                        "output_key": ch.key,
                    }
                    for key, ch in c.inputs.items()
                },
                "outputs": {key: ch.type.TYPE_NAME for key, ch in c.outputs.items()},
                "parameters": redact(to_jsonable(c.params)),
                "upstream": [u.id for u in c.upstream()],
                "enable_cache": c.enable_cache,
                "beam_pipeline_args": redact_args(c.beam_pipeline_args) if c.USES_BEAM else [],
            }
        )
    return {
        "ir_version": IR_VERSION,
        "pipeline": {
            "name": pipeline.name,
            "root": pipeline.root,
            "metadata": {"sqlite": pipeline.metadata},
            "beam_pipeline_args": redact_args(pipeline.beam_pipeline_args),
            "enable_cache": pipeline.enable_cache,
        },
        "nodes": nodes,
    }


def to_json(pipeline: Pipeline) -> str:
    return json.dumps(compile_pipeline(pipeline), indent=2, sort_keys=False)
