"""Keeping secrets out of what Conveyor records and prints.

A parameter (at any depth of `custom_config`, `hyperparameters`, ...) or a
Beam flag whose name looks like a secret (password, token, secret,
credential, an API or access key) is replaced by `REDACTED` in MLMD, the
compiled IR, log lines and re-run reasons. The executor still gets the real
value; the cache key still changes when it changes (`fingerprint`), without
storing it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["REDACTED", "is_secret_name", "redact", "redact_args", "fingerprint"]

REDACTED = "***"

# Whole words or name parts: "db_password", "apiToken", "AWS_SECRET_ACCESS_KEY",
# "credentials", "private_key" -- but not "label_key" or "partition_feature_name".
_SECRET = re.compile(
    r"(passw(or)?d|passphrase|secret|token|credential|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|auth[_-]?key|^key$|_key_id$)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET.search(_words(name)))


def _words(name: str) -> str:
    # camelCase -> camel_case, so "apiToken" and "api_token" read alike.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def redact(value: Any, mask: Any = REDACTED) -> Any:
    """A JSON-like value with every entry under a secret-looking name
    replaced by `mask` (a value, or a function of the secret value)."""
    if isinstance(value, dict):
        return {
            k: ((mask(v) if callable(mask) else mask) if is_secret_name(str(k)) else redact(v, mask))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, mask) for v in value]
    return value


def fingerprint(value: Any) -> str:
    """What stands for a secret in a cache key: it changes with the value,
    and does not show it."""
    return f"{REDACTED} sha256:{hashlib.sha256(repr(value).encode()).hexdigest()[:12]}"


def redact_args(args: Sequence[str]) -> list[str]:
    """Beam flags with the values of secret-looking flags replaced:
    `--s3_secret_access_key=x` and `--s3_secret_access_key x` alike."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.lstrip("-").partition("=")
        if arg.startswith("-") and is_secret_name(name):
            if eq:
                out.append(f"{arg.split('=', 1)[0]}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out
