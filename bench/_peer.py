"""The peer the benchmarks compare with: TFX 1.16.0, run from its own venv
(built by bench/peers/setup_tfx.sh) on the same data, in the same invocation,
right after Conveyor. There is no stored TFX figure anywhere: without the
venv, the benchmarks say the peer was not measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from _common import BENCH_DIR, REPO

__all__ = [
    "NOT_MEASURED", "TFX_BEAM_ARGS", "TFX_SCRIPT", "tfx_python", "tfx_node_times", "node_key",
    "ratio_line",
]

PEERS = os.path.join(REPO, "bench", "peers")
TFX_SCRIPT = os.path.join(PEERS, "tfx_taxi.py")
SETUP = "bench/peers/setup_tfx.sh"
NOT_MEASURED = f"peer not measured (run {SETUP})"
# Must match setup_tfx.sh: the venv and the marker it writes once complete.
TFX_VENV = os.environ.get("CONVEYOR_TFX_VENV") or os.path.join(BENCH_DIR, "tfx-venv")
_MARKER = ".conveyor-peer-tfx"

# What TFX runs with unless --tfx-beam-arg says otherwise: Beam's DirectRunner
# in its default in-memory mode. On 2 cores it beat
# `--direct_running_mode=multi_processing --direct_num_workers=2` (the mode
# the old stored TFX figures were measured in) for TFX's pipelines here; see
# bench/README.md. Conveyor runs with its own defaults unless --beam-arg.
TFX_BEAM_ARGS: list[str] = ["--direct_running_mode=in_memory"]


def tfx_python() -> str | None:
    """The TFX venv's interpreter, or None when setup_tfx.sh has not completed."""
    python = os.path.join(TFX_VENV, "bin", "python")
    if os.path.isfile(os.path.join(TFX_VENV, _MARKER)) and os.access(python, os.X_OK):
        return python
    return None


def node_key(name: str) -> str:
    """Conveyor's `csv_example_gen` and TFX's `CsvExampleGen` as one key."""
    return name.replace("_", "").lower()


def tfx_node_times(metadata_db: str, after_ms: int = 0) -> dict[str, tuple[str, float]]:
    """Per TFX node of the runs that started after `after_ms` (epoch ms) in
    the SQLite MLMD at `metadata_db`: (state, seconds from the execution's
    registration to its last update). Read with Conveyor's own ml_metadata,
    after TFX's process has exited, so it costs TFX nothing."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = metadata_db
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    node_type = {t.id for t in store.get_context_types() if t.name == "node"}
    times: dict[str, tuple[str, float]] = {}
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        if execution.create_time_since_epoch < after_ms:
            continue
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id in node_type]
        if not nodes:
            continue
        name = nodes[0].split(".", 1)[-1]
        state = mlmd.Execution.State.Name(execution.last_known_state)
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        times[name] = (state, seconds)
    return times


def ratio_line(what: str, ours: float, theirs: float | None, target: str = "",
               met: Callable[[float], bool] | None = None, label: str = "Conveyor/TFX") -> str:
    """`what: Conveyor/TFX = 0.310x (target <= 0.25x): MISSED`, or that the
    peer was not measured. Without a target, the ratio alone."""
    if theirs is None:
        return f"{what}: {NOT_MEASURED}"
    value = ours / theirs if theirs else float("inf")
    line = f"{what}: {label} = {value:.3f}x"
    if met is not None:
        line += f" (target {target}): {'MET' if met(value) else 'MISSED'}"
    return line
