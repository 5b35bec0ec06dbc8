"""Loading the example pipelines under examples/ by path."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example_dir(name: str) -> str:
    return os.path.join(REPO, "examples", name)


def load_example(name: str) -> ModuleType:
    """examples/<name>/pipeline.py as a module of its own name, so two
    examples never shadow each other as `pipeline`."""
    path = os.path.join(example_dir(name), "pipeline.py")
    spec = importlib.util.spec_from_file_location(f"conveyor_example_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_states(output: str) -> dict[str, str]:
    """Each node's final state from `conveyor run`'s progress lines."""
    states = {}
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) >= 2 and parts[1] in ("COMPLETE", "CACHED", "FAILED", "resolved"):
            states[parts[0]] = parts[1]
    return states
