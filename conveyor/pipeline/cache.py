"""Cache keys: a node is skipped when its key matches an earlier successful
execution. The key covers the component type and version, the identities of
its input artifacts, its typed parameters and the content of the user code it
loads. Its parts are kept so a re-run can say which part changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from conveyor import fs, secrets
from conveyor.artifacts import Artifact
from conveyor.components.base import fingerprint_files, user_code_files
from conveyor.pipeline.dsl import Component
from conveyor.secrets import redact

__all__ = ["cache_key_parts", "digest", "explain_change"]


def cache_key_parts(
    component: Component, inputs: dict[str, list[Artifact]], params: dict[str, Any]
) -> dict[str, str] | None:
    """The parts of the cache key, or None when the node cannot be cached
    (its user code file is missing: the executor will report that)."""
    parts: dict[str, str] = {"component": f"{component.type_name()}@{component.VERSION}"}
    for key, artifacts in sorted(inputs.items()):
        spec = component.INPUTS.get(key)
        if spec is not None and not spec.in_cache_key:
            continue
        parts[f"input:{key}"] = ",".join(str(a.id) for a in artifacts)
    # Secrets are kept as fingerprints: the key changes with them, and the
    # parts (recorded in MLMD, shown in re-run reasons) never hold them.
    for name, value in sorted(redact(params, mask=secrets.fingerprint).items()):
        parts[f"parameter:{name}"] = json.dumps(value, sort_keys=True)
    for name, fingerprint in sorted(component.external_fingerprints().items()):
        parts[f"data:{name}"] = fingerprint
    for path in component.code_files():
        if not fs.isfile(path):
            return None
        files = user_code_files(path)
        for f in files:
            parts[f"code:{fs.relpath(f, fs.dirname(path))}"] = fingerprint_files([f])
    return parts


def digest(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def explain_change(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """What differs between two cache keys, in words."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        kind, _, name = key.partition(":")
        if key not in old:
            changes.append(f"{kind} {name!r} added" if name else f"{kind} added")
        elif key not in new:
            changes.append(f"{kind} {name!r} removed" if name else f"{kind} removed")
        elif kind == "code":
            changes.append(f"code file {name} changed")
        elif kind == "data":
            changes.append(f"input data {name!r} changed")
        elif kind == "input":
            changes.append(f"input {name!r} changed (artifacts {old[key] or '-'} -> {new[key] or '-'})")
        elif kind == "parameter":
            changes.append(f"parameter {name!r} changed ({_short(old[key])} -> {_short(new[key])})")
        else:
            changes.append(f"{kind} changed ({old[key]} -> {new[key]})")
    return changes


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
