"""One filesystem layer for every artifact path: local paths, `s3://` and `gs://`.

Executors and the orchestrator touch artifact paths only through this module
(and, inside Beam pipelines, through Beam's own `FileSystems`; inside
TensorFlow, through `tf.io.gfile` once `enable_tensorflow()` registered the
object stores). Local paths keep using the operating system directly, so
local runs cost what they did; object stores go through pyarrow's
filesystems, which also serve Arrow's reads (`arrow_filesystem`).

Object stores have no directories: a "directory" is a key prefix, making one
is a no-op, and it exists while it holds an object. There is no atomic
rename either, so `rename` copies then deletes; an artifact is published by
writing it in place and then a marker object (`mark_complete`), which
readers check (`is_complete`) before trusting what they see.

One configuration for endpoint and credentials: the standard
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and `AWS_REGION` environment,
and Google's application-default credentials for `gs://`. `beam_args()` and
`enable_tensorflow()` hand that configuration (never the secrets: those stay
in the environment, where boto3 and TensorFlow read them) to Beam and TF.
"""

from __future__ import annotations

import builtins
import dataclasses
import fnmatch
import functools
import glob as _glob
import io
import os
import posixpath
import re
import shutil
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from typing import IO, Any, NoReturn
from urllib.parse import urlparse

__all__ = [
    "REMOTE_SCHEMES",
    "COMPLETE_MARKER",
    "share_beam_s3_clients",
    "FileStat",
    "is_remote",
    "scheme",
    "join",
    "abspath",
    "dirname",
    "basename",
    "relpath",
    "realpath",
    "exists",
    "isfile",
    "isdir",
    "makedirs",
    "listdir",
    "walk_files",
    "glob",
    "open",
    "read_bytes",
    "read_text",
    "write_bytes",
    "write_text",
    "remove",
    "rmtree",
    "copy",
    "copytree",
    "rename",
    "stat",
    "stat_many",
    "mark_complete",
    "is_complete",
    "arrow_filesystem",
    "beam_args",
    "enable_tensorflow",
    "s3_endpoint",
    "iter_chunks",
    "tensorflow_io_loaded",
    "exit_process",
]

REMOTE_SCHEMES = ("s3", "gs")
# Written last into a published artifact's directory; its absence means the
# files under the URI may be partial (a crash, or a run still writing).
COMPLETE_MARKER = ".conveyor-complete"

_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)


@dataclasses.dataclass(frozen=True)
class FileStat:
    """What a filesystem reports about a file, without reading it."""

    path: str
    size: int
    mtime_ns: int
    # The object's checksum or generation where the store gives one (S3's
    # ETag, GCS's generation); empty on local disks.
    checksum: str = ""


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def scheme(path: str) -> str:
    """'s3', 'gs', or '' for a local path (a `file://` URI counts as local)."""
    m = _URI.match(path)
    if not m or m.group(1).lower() == "file":
        return ""
    return m.group(1).lower()


def is_remote(path: str) -> bool:
    return scheme(path) != ""


def _check_scheme(path: str) -> str:
    s = scheme(path)
    if s and s not in REMOTE_SCHEMES:
        raise ValueError(
            f"{path!r}: the scheme {s}:// is not supported; use a local path, s3:// or gs://."
        )
    return s


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(_local(base), *parts)


def abspath(path: str) -> str:
    """An absolute local path, or the URI as it is (without a trailing '/')."""
    if _check_scheme(path):
        head, _, rest = path.partition("://")
        rest = posixpath.normpath(rest) if rest.strip("/") else rest.strip("/")
        return f"{head.lower()}://{rest.lstrip('/')}"
    return os.path.abspath(_local(path))


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(_local(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(_local(path))


def relpath(path: str, start: str) -> str:
    if is_remote(path):
        return posixpath.relpath(path.split("://", 1)[1], start.split("://", 1)[1])
    return os.path.relpath(_local(path), _local(start))


def realpath(path: str) -> str:
    """The path with symlinks resolved (local), or normalised (object stores
    have no links): what a containment check must compare."""
    return abspath(path) if is_remote(path) else os.path.realpath(_local(path))


# ---------------------------------------------------------------------------
# Remote backends: pyarrow's filesystems, configured from the environment.
# ---------------------------------------------------------------------------


def s3_endpoint() -> str:
    """The S3 endpoint URL from the environment, '' for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _config_key() -> tuple[str, ...]:
    # The filesystem objects are cached per configuration, so a test (or a
    # user) that changes the environment gets a client that follows it.
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")
    return tuple(os.environ.get(n, "") for n in names)


_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _arrow_fs(kind: str, config: tuple[str, ...]) -> Any:
    from pyarrow import fs as pafs

    del config  # part of the cache key only
    if kind == "s3":
        kwargs: dict[str, Any] = {}
        endpoint = s3_endpoint()
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
        return pafs.S3FileSystem(**kwargs)
    if kind == "gs":
        return pafs.GcsFileSystem()
    raise ValueError(kind)


def arrow_filesystem(path: str) -> tuple[Any, str]:
    """(a pyarrow FileSystem, the path within it) for Arrow reads and writes
    of `path`: pyarrow's local filesystem for a local path."""
    s = _check_scheme(path)
    if not s:
        from pyarrow import fs as pafs

        return pafs.LocalFileSystem(), os.path.abspath(_local(path))
    with _lock:
        filesystem = _arrow_fs(s, _config_key())
    return filesystem, path.split("://", 1)[1].rstrip("/")


def _info(path: str) -> Any:
    filesystem, inner = arrow_filesystem(path)
    return filesystem.get_file_info(inner)


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(_local(path))
    from pyarrow import fs as pafs

    return _info(path).type != pafs.FileType.NotFound


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(_local(path))
    from pyarrow import fs as pafs

    return _info(path).type == pafs.FileType.File


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(_local(path))
    from pyarrow import fs as pafs

    return _info(path).type == pafs.FileType.Directory


def listdir(path: str) -> list[str]:
    """The names directly under a directory (or key prefix), sorted."""
    if not is_remote(path):
        return sorted(os.listdir(_local(path)))
    from pyarrow import fs as pafs

    filesystem, inner = arrow_filesystem(path)
    infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


def _remote_files(path: str) -> list[Any]:
    from pyarrow import fs as pafs

    filesystem, inner = arrow_filesystem(path)
    infos = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File]


def walk_files(path: str) -> list[str]:
    """Every file under a directory, as paths relative to it ('/'-separated), sorted."""
    if not is_remote(path):
        root = _local(path)
        found = [
            os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
            for d, _, names in os.walk(root) for f in names
        ]
        return sorted(found)
    _, inner = arrow_filesystem(path)
    return sorted(posixpath.relpath(i.path, inner) for i in _remote_files(path))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    # fnmatch's '*' crosses '/', a shell glob's does not.
    parts = [fnmatch.translate(p).replace(".*", "[^/]*").removesuffix(r"\Z") for p in pattern.split("/")]
    return re.compile("/".join(p.removeprefix("(?s:").removesuffix(")") for p in parts) + r"\Z", re.S)


def glob(pattern: str) -> list[str]:
    """Files and directories matching a shell glob (`*`, `?`, `[...]`, no
    `**`), sorted; on an object store, the keys under the pattern's fixed
    prefix are listed once and matched."""
    if not is_remote(pattern):
        return sorted(_glob.glob(_local(pattern)))
    head, _, rest = pattern.partition("://")
    wild = re.search(r"[*?\[]", rest)
    if not wild:
        return [pattern] if exists(pattern) else []
    prefix = rest[: rest.rfind("/", 0, wild.start()) + 1]
    regex = _glob_regex(rest)
    from pyarrow import fs as pafs

    filesystem, _ = arrow_filesystem(pattern)
    infos = filesystem.get_file_info(pafs.FileSelector(prefix.rstrip("/"), recursive=True, allow_not_found=True))
    matched = {i.path for i in infos if regex.match(i.path)}
    return sorted(f"{head}://{p}" for p in matched)


def stat(path: str) -> FileStat:
    """Size and modification time (and, on S3 and GCS, the object's checksum
    or generation) without reading the file."""
    return stat_many([path])[0]


def stat_many(paths: Iterable[str]) -> list[FileStat]:
    """`stat` of many files, listing each remote prefix once."""
    paths = list(paths)
    result: dict[str, FileStat] = {}
    for p in paths:
        if not is_remote(p):
            st = os.stat(_local(p))
            result[p] = FileStat(p, st.st_size, st.st_mtime_ns)
    for kind in REMOTE_SCHEMES:
        remote = [p for p in paths if scheme(p) == kind]
        if not remote:
            continue
        from pyarrow import fs as pafs

        filesystem, _ = arrow_filesystem(remote[0])
        infos = filesystem.get_file_info([arrow_filesystem(p)[1] for p in remote])
        checksums = _s3_etags(remote) if kind == "s3" else {}
        for p, info in zip(remote, infos, strict=True):
            if info.type != pafs.FileType.File:
                raise FileNotFoundError(f"{p} is not a file")
            result[p] = FileStat(p, info.size, info.mtime_ns or 0, checksums.get(p, ""))
    return [result[p] for p in paths]


def _s3_etags(paths: list[str]) -> dict[str, str]:
    """S3 ETags of objects, one listing per directory: pyarrow does not
    report them, boto3 (Beam's S3 client) does. Empty when boto3 is absent."""
    try:
        import boto3
    except ImportError:
        return {}
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=s3_endpoint() or None)
    by_prefix: dict[tuple[str, str], set[str]] = {}
    for p in paths:
        bucket, _, key = p.split("://", 1)[1].partition("/")
        by_prefix.setdefault((bucket, posixpath.dirname(key)), set()).add(key)
    etags: dict[str, str] = {}
    for (bucket, prefix), keys in by_prefix.items():
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", Delimiter="/"):
            for obj in page.get("Contents", []):
                if obj["Key"] in keys:
                    etags[f"s3://{bucket}/{obj['Key']}"] = obj["ETag"].strip('"')
    return etags


# ---------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------


def open(path: str, mode: str = "r", encoding: str | None = None) -> IO[Any]:  # noqa: A001
    """A file object for 'r', 'rb', 'w' or 'wb'; writing makes missing parent
    directories. On an object store a file written is visible (whole) only
    when closed."""
    if not is_remote(path):
        if "w" in mode:
            # As on an object store, writing a file needs no directory made first.
            os.makedirs(os.path.dirname(os.path.abspath(_local(path))), exist_ok=True)
        return _builtin_open(_local(path), mode, encoding=None if "b" in mode else (encoding or "utf-8"))
    filesystem, inner = arrow_filesystem(path)
    if mode in ("r", "rb"):
        raw: Any = filesystem.open_input_file(inner)
    elif mode in ("w", "wb"):
        raw = filesystem.open_output_stream(inner)
    else:
        raise ValueError(f"fs.open: mode {mode!r} is not supported on {path}; use r, rb, w or wb")
    if "b" in mode:
        return raw
    return io.TextIOWrapper(raw, encoding=encoding or "utf-8")


_builtin_open = builtins.open


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
    with open(path, "r", encoding=encoding) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file; a local one is replaced atomically."""
    if is_remote(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    local = _local(path)
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    tmp = f"{local}.tmp-{os.getpid()}-{threading.get_ident()}"
    with _builtin_open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, local)


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


def makedirs(path: str) -> None:
    """Create a directory and its parents (a no-op on object stores)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(_local(path))
        return
    filesystem, inner = arrow_filesystem(path)
    filesystem.delete_file(inner)


def rmtree(path: str) -> None:
    """Remove a directory and everything under it; nothing if it is absent."""
    if not is_remote(path):
        shutil.rmtree(_local(path), ignore_errors=True)
        return
    from pyarrow import fs as pafs

    filesystem, inner = arrow_filesystem(path)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        filesystem.delete_dir_contents(inner, missing_dir_ok=True)
        try:
            filesystem.delete_dir(inner)
        except OSError:
            pass  # An implied prefix has no object of its own.
    elif info.type == pafs.FileType.File:
        filesystem.delete_file(inner)


def copy(src: str, dst: str) -> None:
    """Copy one file, across filesystems if need be (making a local
    destination's directory)."""
    if not is_remote(dst):
        makedirs(os.path.dirname(os.path.abspath(_local(dst))))
        if not is_remote(src):
            shutil.copyfile(_local(src), _local(dst))
            return
    elif scheme(src) == scheme(dst):
        filesystem, inner = arrow_filesystem(src)
        filesystem.copy_file(inner, arrow_filesystem(dst)[1])
        return
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)


def copytree(src: str, dst: str, *, last: Iterable[str] = ()) -> None:
    """Copy every file under `src` to the same place under `dst`. Files whose
    relative path is in `last` are copied after all others (a SavedModel's
    `saved_model.pb`, so a server polling `dst` loads it only when whole)."""
    late = set(last)
    files = walk_files(src)
    for rel in sorted(files, key=lambda r: (r in late, r)):
        copy(join(src, rel), join(dst, rel))


def rename(src: str, dst: str) -> None:
    """Move a file or directory: atomic on a local disk; on an object store a
    copy of every object, then the delete of the source."""
    if not is_remote(src) and not is_remote(dst):
        os.rename(_local(src), _local(dst))
        return
    if isfile(src):
        copy(src, dst)
        remove(src)
        return
    copytree(src, dst)
    rmtree(src)


# ---------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------


def mark_complete(uri: str) -> None:
    """Declare the files under an artifact's URI whole: written last, after
    everything else there."""
    makedirs(uri)
    write_bytes(join(uri, COMPLETE_MARKER), b"")


def is_complete(uri: str) -> bool:
    return exists(join(uri, COMPLETE_MARKER))


# ---------------------------------------------------------------------------
# Handing the configuration to Beam and TensorFlow
# ---------------------------------------------------------------------------


def beam_args(paths: Iterable[str]) -> list[str]:
    """Beam flags for the object stores `paths` live on: the S3 endpoint and
    region (credentials stay in the environment, where boto3 finds them on
    every worker; they never appear on a command line or in MLMD), and the
    worker plugin that lets TensorFlow on workers read s3://."""
    args: list[str] = []
    if any(scheme(p) == "s3" for p in paths):
        # Workers register TensorFlow's s3:// filesystem when they start.
        args.append("--beam_plugins=conveyor.beam_worker")
        endpoint = s3_endpoint()
        if endpoint:
            args.append(f"--s3_endpoint_url={endpoint}")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            args.append(f"--s3_region_name={region}")
    return args


_beam_s3_shared = False
_beam_s3_lock = threading.Lock()


def share_beam_s3_clients() -> None:
    """Make Beam's S3 filesystem reuse one boto3 client per configuration
    in this process. Beam 2.61 builds a boto3 session and client for every
    operation (each open, list, stat, copy, delete), and each new session
    parses botocore's JSON service models again: ~30 ms per operation, 4.5 s
    of a 15k-row Transform on s3:// (about 150 operations). boto3 clients
    are thread-safe; sessions, which are not shared, were only ever used to
    make the client. The key is every argument Beam passes, credentials
    included, so a client is shared only by identical configurations.
    Called by ExecutionContext.beam_pipeline() and by `conveyor.beam_worker`
    in Beam's worker processes."""
    global _beam_s3_shared
    with _beam_s3_lock:
        if _beam_s3_shared:
            return
        try:
            import boto3
            from apache_beam.io.aws.clients.s3 import boto3_client
        except ImportError:
            return  # no S3 support installed: Beam reports that when s3:// is used
        clients: dict[tuple[tuple[str, Any], ...], Any] = {}

        class _Session:
            def client(self, **kwargs: Any) -> Any:
                key = tuple(sorted(kwargs.items()))
                with _beam_s3_lock:
                    client = clients.get(key)
                    if client is None:
                        client = clients[key] = boto3.session.Session().client(**kwargs)
                return client

        # What Beam's S3 client module uses of `boto3`: `boto3.session.Session()`.
        boto3_client.boto3 = types.SimpleNamespace(session=types.SimpleNamespace(Session=_Session))
        _beam_s3_shared = True


_tf_ready = False


def enable_tensorflow(paths: Iterable[str] = ()) -> None:
    """Let TensorFlow's `tf.io.gfile` (and so TFT, TFMA, SavedModel) read and
    write s3:// through tensorflow-io, with the endpoint and region from the
    standard AWS environment. gs:// works in TensorFlow without this."""
    global _tf_ready
    if _tf_ready or not any(scheme(p) == "s3" for p in paths):
        return
    endpoint = s3_endpoint()
    if endpoint:
        os.environ.setdefault("S3_ENDPOINT", endpoint)
        if endpoint.startswith("http://"):
            os.environ.setdefault("S3_USE_HTTPS", "0")
            os.environ.setdefault("S3_VERIFY_SSL", "0")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        os.environ.setdefault("AWS_REGION", region)
    import tensorflow_io  # noqa: F401 - registers the s3:// filesystem with tf.io.gfile

    _tf_ready = True


def tensorflow_io_loaded() -> bool:
    """Whether enable_tensorflow() loaded tensorflow-io in this process."""
    return _tf_ready


def exit_process(code: int) -> NoReturn:
    """End a command-line process with `code`. tensorflow-io 0.37's S3
    filesystem aborts the interpreter in its static destructors at exit
    (tensorflow/io#2039), turning a finished run into exit code 134: when
    it was loaded, flush and leave without running them."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _tf_ready:
        os._exit(code)
    sys.exit(code)


def iter_chunks(path: str, size: int = 8 << 20) -> Iterator[bytes]:
    """A file's bytes in blocks (for hashing large files)."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk
