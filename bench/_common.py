"""Shared by the benchmarks: a deterministic, taxi-like CSV of any size, and
a sampler of the resident memory of a process tree.

Benchmarks run the measured work in a child process and sample that child
and its descendants (e.g. Beam worker processes) from the parent, so the peak
memory is the work's own, not the benchmark driver's.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REPO", "SOURCE_CSV", "BENCH_DIR", "taxi_csv", "TreeSampler", "run_sampled", "Measured", "measure",
    "mb", "gb", "load_average",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_CSV = os.path.join(REPO, "examples", "taxi", "data", "data.csv")
# Generated CSVs, pipeline roots and the TFX peer venv live here, outside the repo.
BENCH_DIR = os.environ.get("CONVEYOR_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "conveyor-bench")
# Bump when the generator changes, so cached files are not reused.
_GENERATOR_VERSION = 1
_CHUNK_ROWS = 250_000
# Continuous columns get noise; ids, categories and timestamps are kept as sampled.
_RELATIVE_NOISE = {"fare": 2, "trip_miles": 2, "tips": 2}  # column -> decimals kept
_ABSOLUTE_NOISE = {"pickup_latitude": 6, "pickup_longitude": 6, "dropoff_latitude": 6, "dropoff_longitude": 6}
_INT_NOISE = {"trip_seconds": 30}  # column -> max jitter in seconds
_TICKS = os.sysconf("SC_CLK_TCK")


def mb(kilobytes: float) -> str:
    return f"{kilobytes / 1024:,.0f} MB"


def gb(kilobytes: float) -> str:
    return f"{kilobytes / 1024 / 1024:,.2f} GB"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.93 1.40 0.90'."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def taxi_csv(rows: int, data_dir: str, seed: int = 0, echo: Callable[[str], None] = print) -> str:
    """The path of a CSV of `rows` taxi-like rows in its own directory (so it
    can be an ExampleGen input_base), generated once per (rows, seed) and
    cached under `data_dir`: rows sampled with replacement from the 15,002
    trips of examples/taxi, small noise on the continuous columns, empty
    fields kept where the sampled row has them."""
    directory = os.path.join(data_dir, f"taxi-{rows}-s{seed}-v{_GENERATOR_VERSION}")
    path = os.path.join(directory, "data.csv")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    t0 = time.monotonic()
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        for block in _csv_blocks(rows, seed):
            f.write(block)
    os.rename(tmp, path)  # Only a complete file is ever cached.
    size = os.path.getsize(path) / 1e6
    echo(f"generated {rows:,} rows ({size:,.0f} MB) in {time.monotonic() - t0:.1f}s: {path}")
    return path


def _csv_blocks(rows: int, seed: int) -> Any:
    """The CSV text, header first, in chunks of bytes; vectorised with
    pyarrow/numpy (formatting 1.5M rows row by row would take minutes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    source = pcsv.read_csv(
        SOURCE_CSV,
        convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True),
    )
    names = source.column_names
    yield (",".join(names) + "\n").encode()
    rng = np.random.default_rng(seed)
    done = 0
    while done < rows:
        n = min(_CHUNK_ROWS, rows - done)
        chunk = source.take(pa.array(rng.integers(0, source.num_rows, n)))
        columns = []
        for name in names:
            column = chunk.column(name).combine_chunks()
            if name in _RELATIVE_NOISE:
                factor = pa.array(1.0 + rng.normal(0.0, 0.05, n))
                column = pc.max_element_wise(pc.multiply(column, factor), 0.0)
                column = pc.round(column, _RELATIVE_NOISE[name])
            elif name in _ABSOLUTE_NOISE:
                column = pc.round(pc.add(column, pa.array(rng.normal(0.0, 0.002, n))), _ABSOLUTE_NOISE[name])
            elif name in _INT_NOISE:
                jitter = rng.integers(-_INT_NOISE[name], _INT_NOISE[name] + 1, n)
                # A zero duration stays zero (the source has many): only jitter positive ones.
                column = pc.max_element_wise(pc.add(column, pa.array(jitter)), 1)
                column = pc.if_else(pc.equal(chunk.column(name).combine_chunks(), 0), 0, column)
            columns.append(_csv_field(column))
        lines = pc.binary_join_element_wise(*columns, ",")
        lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # Each line ends in "\n".
        yield _string_bytes(lines)
        done += n


def _csv_field(column: Any) -> Any:
    """A column as CSV field text: a null is an empty field, text holding a
    comma, quote or newline is quoted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(column, pa.string())
    if pa.types.is_string(column.type):
        special = pc.match_substring_regex(text, r'[,"\n\r]')
        if pc.any(special).as_py():
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
            text = pc.if_else(special, quoted, text)
    return pc.fill_null(text, "")


def _string_bytes(array: Any) -> bytes:
    """The concatenated values of a string array (no nulls), without copying per row."""
    import numpy as np

    array = array.combine_chunks() if hasattr(array, "combine_chunks") else array
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset:array.offset + len(array) + 1]
    return array.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


# ---------------------------------------------------------------------------
# Memory of a process tree
# ---------------------------------------------------------------------------


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """`root` and every live process below it, each with its CPU time so far
    (user + system, clock ticks) and its parent's pid. Scans /proc: this
    kernel has no /proc/<pid>/task/<tid>/children."""
    children: dict[int, list[int]] = {}
    facts: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # Exited meanwhile.
        fields = stat[stat.rindex(b")") + 2:].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        facts[pid] = (int(fields[11]) + int(fields[12]), int(fields[1]))  # utime + stime, ppid
    found: dict[int, tuple[int, int]] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in facts:
            found[pid] = facts[pid]
        pending.extend(children.get(pid, []))
    return found


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in kB; (0, 0) once it has exited."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _private_kb(pid: int) -> int | None:
    """The pages only `pid` maps (Private_Clean + Private_Dirty), in kB."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


def _program(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _forked(pid: int, ppid: int, tree: Mapping[int, Any]) -> bool:
    """Whether `pid` is a fork of its parent in the tree that did not exec
    (e.g. a node forked by Conveyor's fork server): until it writes to them
    it shares its parent's pages, which the tree sum must not count twice."""
    return ppid in tree and _program(pid) == _program(ppid) != b""


class TreeSampler(threading.Thread):
    """Samples a process and its descendants every `interval` seconds and
    keeps, per phase (set by `set_phase`): the peak RSS summed over the tree
    (a process forked from another in the tree without exec counts only the
    pages it does not share, as the kernel keeps one copy of the rest) and
    of the largest single process, how far the phase raised the
    single-process peak, and the CPU time spent. The single-process peak uses
    each process's high-water mark (VmHWM), so it misses no short spike; the
    tree sum is sampled."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.phase = "startup"
        self.phases: dict[str, dict[str, float]] = {}
        self.hwm: dict[int, int] = {}  # pid -> VmHWM kB
        self.cpu: dict[int, int] = {}  # pid -> CPU clock ticks (kept after it exits)
        self.processes = 0
        self._phase_start_hwm = 0
        self._counted_ticks = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._sample()  # Close the previous phase with a fresh sample.
            self.phase = phase
            self._phase_start_hwm = max(self.hwm.values(), default=0)
            self._sample()

    def _sample(self) -> None:
        pids = _descendants(self.pid)
        total = largest = 0
        for pid, (ticks, ppid) in pids.items():
            self.cpu[pid] = max(self.cpu.get(pid, 0), ticks)
            rss, hwm = _status_kb(pid)
            private = _private_kb(pid) if _forked(pid, ppid, pids) else None
            total += rss if private is None else private
            largest = max(largest, rss)
            if hwm > self.hwm.get(pid, 0):
                # A new high-water mark was reached since the last sample, so
                # within this phase: it is the exact peak, which sampling may miss.
                largest = max(largest, hwm)
                self.hwm[pid] = hwm
        self.processes = max(self.processes, len(pids))
        p = self.phases.setdefault(self.phase, {"tree_kb": 0, "process_kb": 0, "raised_kb": 0, "cpu_s": 0.0})
        p["tree_kb"] = max(p["tree_kb"], total)
        p["process_kb"] = max(p["process_kb"], largest)
        # How far this phase pushed the single-process peak above the earlier
        # phases': memory a phase merely keeps from earlier ones does not count.
        p["raised_kb"] = max(p["raised_kb"], max(self.hwm.values(), default=0) - self._phase_start_hwm)
        ticks = sum(self.cpu.values())
        p["cpu_s"] += (ticks - self._counted_ticks) / _TICKS
        self._counted_ticks = ticks

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                self._sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def peak_tree_kb(self) -> int:
        return int(max((p["tree_kb"] for p in self.phases.values()), default=0))

    @property
    def peak_process_kb(self) -> int:
        """The largest single process, exact (its VmHWM) where it was seen."""
        sampled = max((p["process_kb"] for p in self.phases.values()), default=0)
        return int(max([sampled, *self.hwm.values()]))


def run_sampled(
    cmd: Sequence[str],
    *,
    on_line: Callable[[str, TreeSampler], None],
    stderr_path: str,
    interval: float = 0.2,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> tuple[int, TreeSampler, float]:
    """Run `cmd`, feeding each stdout line to `on_line` while sampling its
    memory; return (exit code, sampler, wall seconds)."""
    t0 = time.monotonic()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            list(cmd), stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
            env=None if env is None else dict(env), cwd=cwd,
        )
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"), sampler)
        code = proc.wait()
    # The last sample before exit is what the thread saw; VmHWM covers the rest.
    sampler.stop()
    return code, sampler, time.monotonic() - t0


@dataclass
class Measured:
    """One process run as a user sees it: wall time from start to exit, the
    peak RSS summed over its process tree (sampled) and of its largest single
    process (exact), and the CPU time of the whole tree."""

    code: int
    wall_s: float
    peak_tree_kb: int
    peak_process_kb: int
    cpu_s: float
    processes: int
    load_before: str
    load_after: str
    stdout: list[str] = field(default_factory=list)
    sampler: TreeSampler | None = None


def measure(
    cmd: Sequence[str],
    *,
    stderr_path: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_line: Callable[[str, TreeSampler], None] | None = None,
) -> Measured:
    """Run `cmd` to its exit, sampling its process tree; keep its stdout lines.
    The CPU time is exact: the rusage of the child and every descendant it
    waited for (Beam's worker processes are), not a sum of samples."""
    lines: list[str] = []

    def collect(line: str, sampler: TreeSampler) -> None:
        lines.append(line)
        if on_line is not None:
            on_line(line, sampler)

    load_before = load_average()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code, sampler, wall = run_sampled(cmd, on_line=collect, stderr_path=stderr_path, env=env, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # ru_maxrss of the children covers the moments after the last sample (the
    # largest child process overall, so it can only raise the single-process peak).
    peak_process = max(sampler.peak_process_kb, after.ru_maxrss if after.ru_maxrss > before.ru_maxrss else 0)
    return Measured(
        code=code, wall_s=wall, peak_tree_kb=max(sampler.peak_tree_kb, peak_process),
        peak_process_kb=peak_process, cpu_s=cpu, processes=sampler.processes,
        load_before=load_before, load_after=load_average(), stdout=lines, sampler=sampler,
    )
