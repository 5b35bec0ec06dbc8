"""ML Metadata: recording (`store`) and lineage queries (`lineage`)."""

from __future__ import annotations

from conveyor.metadata.store import Metadata

__all__ = ["Metadata"]
