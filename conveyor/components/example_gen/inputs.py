"""Which files ExampleGen reads: split patterns relative to input_base, with
`{SPAN}` and `{VERSION}` resolved to the latest span and version (as TFX
picks them); the fingerprints of those files; and the errors bad input
raises, which the executors turn into an ExecutorError naming the component."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

from conveyor import fs
from conveyor.components.example_gen.config import SPEC, Input

__all__ = [
    "InputProblem",
    "RetryNeeded",
    "ResolvedInput",
    "resolve_input",
    "stat_digest",
    "tfx_fingerprint",
    "open_on_worker",
]


class InputProblem(ValueError):
    """Bad input found while resolving or reading (the message says which
    file, what was expected and what to do); the executor raises it as an
    ExecutorError naming the component."""


class RetryNeeded(Exception):
    """Not bad input, but a reason to run again differently: `kind` is
    "types" (a value did not fit the type guessed from a sample) or
    "resplit" (a file's byte ranges cut a quoted field; read it whole)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def open_on_worker(path: str) -> Any:
    """A binary, seekable file object for an input file inside a Beam
    pipeline: Beam's FileSystems, configured by the pipeline's options (the
    S3 endpoint and region reach remote workers that way), never decompressed."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


@dataclasses.dataclass
class ResolvedInput:
    """The files each input split reads, and the span and version chosen."""

    span: int
    version: int | None
    files: dict[str, list[str]]  # input split name -> sorted absolute paths


def _glob_to_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _pattern_parts(pattern: str) -> tuple[str, re.Pattern[str]]:
    """The glob that lists candidate files and the regex that reads their
    span and version."""
    glob_parts, regex_parts = [], []
    pos = 0
    for m in SPEC.finditer(pattern):
        literal = pattern[pos:m.start()]
        glob_parts.append(literal)
        regex_parts.append(_glob_to_regex(literal))
        width = m.group(2)
        glob_parts.append("?" * int(width) if width else "*")
        digits = rf"\d{{{int(width)}}}" if width else r"\d+"
        regex_parts.append(f"(?P<{m.group(1).lower()}>{digits})")
        pos = m.end()
    glob_parts.append(pattern[pos:])
    regex_parts.append(_glob_to_regex(pattern[pos:]))
    return "".join(glob_parts), re.compile("".join(regex_parts) + r"\Z")


def resolve_input(input_base: str, input_config: Input) -> ResolvedInput:
    """The files each input split reads now: with {SPAN}/{VERSION} in the
    patterns, those of the latest span and its latest version, as TFX picks
    them. Raises InputProblem (a ValueError saying what to do) when
    input_base is not a directory, a split matches no file, or the splits'
    latest spans differ."""
    base = fs.abspath(input_base)
    if not fs.isdir(base):
        raise InputProblem(
            f"input_base {input_base!r} ({base}) is not a directory. Point input_base at the directory "
            f"that holds the data files."
        )
    found: dict[str, dict[tuple[int, int], list[str]]] = {}
    uses_span = uses_version = False
    remote_files: list[str] | None = None
    for split in input_config.splits:
        glob_pattern, regex = _pattern_parts(split.pattern)
        uses_span = uses_span or "{SPAN" in split.pattern
        uses_version = uses_version or "{VERSION" in split.pattern
        by_key: dict[tuple[int, int], list[str]] = {}
        if fs.is_remote(base):
            # One listing of the prefix serves every split; object stores
            # list files only. Hidden names are skipped, as a local glob does.
            if remote_files is None:
                remote_files = [
                    rel for rel in fs.walk_files(base) if not any(p.startswith(".") for p in rel.split("/"))
                ]
            candidates = [(fs.join(base, rel), rel) for rel in remote_files]
        else:
            candidates = [
                (path, fs.relpath(path, base).replace(os.sep, "/"))
                for path in fs.glob(fs.join(glob.escape(base), glob_pattern)) if fs.isfile(path)
            ]
        for path, rel in candidates:
            m = regex.match(rel)
            if not m:
                continue
            groups = m.groupdict()
            key = (int(groups.get("span") or 0), int(groups.get("version") or 0))
            by_key.setdefault(key, []).append(path)
        if not by_key:
            names = fs.listdir(base)
            raise InputProblem(
                f"input split {split.name!r}: no file matches pattern {split.pattern!r} under {base} "
                f"(it holds {names[:10] or 'nothing'}{' ...' if len(names) > 10 else ''}). "
                f"Fix input_config's pattern or put the data files there."
            )
        found[split.name] = by_key
    latest = {name: max(keys) for name, keys in found.items()}
    if len(set(latest.values())) > 1:
        desc = ", ".join(f"{n!r}: span {s} version {v}" for n, (s, v) in latest.items())
        raise InputProblem(
            f"the input splits' latest span/version differ ({desc}); every split must have files for "
            f"the same latest span and version. Add the missing files or fix the patterns."
        )
    span, version = next(iter(latest.values()))
    files = {name: sorted(by_key[(span, version)]) for name, by_key in found.items()}
    return ResolvedInput(
        span=span if uses_span else 0, version=version if uses_version else None, files=files
    )


def stat_digest(base: str, paths: list[str]) -> str:
    """A sha256 over what the filesystem reports of each file (relative
    path, size, mtime in ns, checksum where given), never its bytes."""
    import hashlib

    h = hashlib.sha256()
    for st in fs.stat_many(paths):
        rel = fs.relpath(st.path, base).replace(os.sep, "/")
        h.update(f"{rel}\0{st.size}\0{st.mtime_ns}\0{st.checksum}\n".encode())
    return h.hexdigest()


def tfx_fingerprint(files: dict[str, list[str]]) -> str:
    """TFX's input fingerprint: per split, file count, bytes and checksums of
    the modification times."""
    lines = []
    for name, paths in files.items():
        total = xor = summed = 0
        for st in fs.stat_many(paths):
            total += st.size
            mtime = st.mtime_ns // 1_000_000_000
            xor ^= mtime
            summed += mtime
        lines.append(
            f"split:{name},num_files:{len(paths)},total_bytes:{total},"
            f"xor_checksum:{xor},sum_checksum:{summed}"
        )
    return "\n".join(lines)
