"""The standard components and the function-component decorator.

Importing this package does not import TensorFlow, TFDV, TFT or TFMA: each
executor imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CsvExampleGen": "example_gen",
    "ImportExampleGen": "example_gen",
    "StatisticsGen": "statistics_gen",
    "SchemaGen": "schema_gen",
    "ImportSchemaGen": "schema_gen",
    "ExampleValidator": "example_validator",
    "Transform": "transform",
    "Trainer": "trainer",
    "Evaluator": "evaluator",
    "Pusher": "pusher",
    "Resolver": "resolver",
    "LatestBlessedModel": "resolver",
    "LatestArtifact": "resolver",
    "PreviousSpan": "resolver",
    "Importer": "resolver",
    "component": "function",
    "InputArtifact": "function",
    "OutputArtifact": "function",
    "Parameter": "function",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so `import conveyor.components.base` does not load every component.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
