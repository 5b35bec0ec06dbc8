"""`conveyor schema show FILE` and `conveyor schema diff A B`."""

from __future__ import annotations

import sys

from conveyor import schema as schema_lib

__all__ = ["show_main", "diff_main"]


def show_main(path: str) -> int:
    """Print the features of a schema file (or Schema artifact directory).
    Returns 0, or 2 when the file cannot be read."""
    try:
        schema = schema_lib.load(path)
    except schema_lib.SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(schema_lib.show(schema))
    return 0


def diff_main(a: str, b: str) -> int:
    """Print the changes from schema `a` to schema `b`. Returns 0 when they are
    the same, 1 when they differ, 2 when one cannot be read."""
    try:
        old, new = schema_lib.load(a), schema_lib.load(b)
    except schema_lib.SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    changes = schema_lib.diff(old, new)
    if not changes:
        print(f"No differences between {a} and {b}.")
        return 0
    print(f"{len(changes)} change(s) from {a} to {b}:")
    for change in changes:
        print(f"  {change}")
    return 1
