"""Scale benchmark: CsvExampleGen -> StatisticsGen -> SchemaGen on a big taxi CSV.

    .venv/bin/python bench/scale.py                      # 1,500,000 rows
    .venv/bin/python bench/scale.py --rows 200000
    .venv/bin/python bench/scale.py --sweep 250000,500000,1500000
    .venv/bin/python bench/scale.py --beam-arg --direct_running_mode=multi_processing \\
        --beam-arg --direct_num_workers=2

Prints, per component, wall time, rows per second and peak memory, beside a
baseline measured in the same run (pyarrow.csv.read_csv of the same file),
and the TFX reference. The pipeline and the baseline each run in a child
process whose memory (and its descendants', e.g. Beam workers) is sampled
from here, so the figures are theirs alone. The CSV is generated once per
row count and cached (see --data-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, mb, run_sampled, taxi_csv  # noqa: E402

COMPONENTS = ("csv_example_gen", "statistics_gen", "schema_gen")
# TFX 1.16 on this kind of machine (2 cores, Beam 2.61, DirectRunner with two
# worker processes): CsvExampleGen + StatisticsGen + SchemaGen on 1.5M taxi rows.
TFX_ROWS = 1_500_000
TFX_SECONDS = 346.0
TFX_PEAK_KB = 4.7 * 1024 * 1024
TARGET_SPEEDUP = 20
TARGET_PEAK_KB = 1.6 * 1024 * 1024
DEFAULT_DATA_DIR = os.path.join(tempfile.gettempdir(), "conveyor-bench")


# ---------------------------------------------------------------------------
# Child processes: what is measured.
# ---------------------------------------------------------------------------


def _child_pipeline(spec_json: str) -> int:
    import resource

    spec = json.loads(spec_json)
    from conveyor import LocalRunner, Pipeline
    from conveyor.components.example_gen import CsvExampleGen
    from conveyor.components.schema_gen import SchemaGen
    from conveyor.components.statistics_gen import StatisticsGen

    example_gen = CsvExampleGen(input_base=spec["input_base"])
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"])
    pipeline = Pipeline(
        "bench_scale", spec["root"], [example_gen, statistics_gen, schema_gen],
        beam_pipeline_args=spec["beam_args"],
    )
    print("@@phase runner", flush=True)
    result = LocalRunner(enable_cache=False, echo=lambda line: print(line, flush=True)).run(pipeline)
    print("@@phase done", flush=True)
    examples = result.outputs("csv_example_gen", "examples")[0]
    report = {
        "nodes": {cid: {"seconds": n.seconds, "state": n.state} for cid, n in result.nodes.items()},
        "run_seconds": result.seconds,
        "row_counts": json.loads(examples.custom_properties.get("row_counts", "{}")),
        "maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    with open(spec["result"], "w") as f:
        json.dump(report, f)
    return 0


def _child_baseline(csv_path: str, result_path: str) -> int:
    import resource

    import pyarrow.csv as pcsv

    print("@@phase parse", flush=True)
    t0 = time.monotonic()
    table = pcsv.read_csv(csv_path)
    seconds = time.monotonic() - t0
    print("@@phase done", flush=True)
    with open(result_path, "w") as f:
        json.dump({
            "seconds": seconds, "rows": table.num_rows, "table_bytes": table.nbytes,
            "maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }, f)
    return 0


# ---------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------

_NODE_LINE = re.compile(r"^\s+(\S+)\s+(running|COMPLETE|FAILED|CACHED)\b")


def _phase_tracker(verbose: bool) -> Any:
    def on_line(line: str, sampler: Any) -> None:
        if line.startswith("@@phase "):
            sampler.set_phase(line.split(None, 1)[1])
            return
        m = _NODE_LINE.match(line)
        if m:
            sampler.set_phase(m.group(1) if m.group(2) == "running" else "runner")
        if verbose or m:
            print(f"    | {line}", flush=True)

    return on_line


def _fail(what: str, stderr_path: str) -> None:
    with open(stderr_path, errors="replace") as f:
        tail = f.read()[-4000:]
    sys.exit(f"{what} failed; the end of its stderr ({stderr_path}):\n{tail}")


def measure_pipeline(input_base: str, work_dir: str, beam_args: list[str], keep: bool, verbose: bool) -> dict:
    root = tempfile.mkdtemp(prefix="pipeline-", dir=work_dir)
    result_path = os.path.join(root, "bench-result.json")
    stderr_path = os.path.join(work_dir, "pipeline.stderr")
    spec = {"input_base": input_base, "root": root, "beam_args": beam_args, "result": result_path}
    cmd = [sys.executable, os.path.abspath(__file__), "_pipeline", json.dumps(spec)]
    code, sampler, wall = run_sampled(cmd, on_line=_phase_tracker(verbose), stderr_path=stderr_path)
    if code != 0 or not os.path.exists(result_path):
        _fail(f"the pipeline (root {root})", stderr_path)
    with open(result_path) as f:
        report = json.load(f)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    report["wall_seconds"] = wall
    report["phases"] = sampler.phases
    report["peak_tree_kb"] = sampler.peak_tree_kb
    # ru_maxrss covers the last moments the sampler cannot see (the child has exited).
    report["peak_process_kb"] = max(
        sampler.peak_process_kb, report["maxrss_self_kb"], report["maxrss_children_kb"]
    )
    report["processes"] = sampler.processes
    return report


def measure_baseline(csv_path: str, work_dir: str) -> dict:
    fd, result_path = tempfile.mkstemp(prefix="baseline-", suffix=".json", dir=work_dir)
    os.close(fd)
    stderr_path = os.path.join(work_dir, "baseline.stderr")
    cmd = [sys.executable, os.path.abspath(__file__), "_baseline", csv_path, result_path]
    code, sampler, wall = run_sampled(cmd, on_line=_phase_tracker(False), stderr_path=stderr_path)
    if code != 0:
        _fail("the pyarrow baseline", stderr_path)
    with open(result_path) as f:
        report = json.load(f)
    os.remove(result_path)
    report["wall_seconds"] = wall
    report["peak_process_kb"] = max(sampler.peak_process_kb, report["maxrss_self_kb"])
    report["startup_kb"] = sampler.phases.get("startup", {}).get("process_kb", 0)
    return report


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _load_note() -> str:
    load = os.getloadavg()[0]
    busy = load > 0.5
    return f"load average {load:.2f}" + (" - other work is using the CPUs: timings inflated" if busy else "")


def print_report(rows: int, csv_path: str, pipe: dict, base: dict) -> None:
    size = os.path.getsize(csv_path)
    print(f"\n=== {rows:,} rows, {size / 1e6:,.0f} MB CSV ({csv_path})")
    split_rows = sum(pipe["row_counts"].values())
    if split_rows != rows:
        sys.exit(f"CsvExampleGen wrote {split_rows:,} rows ({pipe['row_counts']}), expected {rows:,}.")
    widths = [22, 8, 7, 12, 11, 12, 10]
    print(_row(["", "wall s", "CPU s", "rows/s", "peak RSS", "raised peak", "tree RSS"], widths))
    empty = {"process_kb": 0, "tree_kb": 0, "raised_kb": 0, "cpu_s": 0.0}
    total = cpu = 0.0
    for cid in COMPONENTS:
        node = pipe["nodes"][cid]
        ph = pipe["phases"].get(cid, empty)
        total += node["seconds"]
        cpu += ph["cpu_s"]
        print(_row([cid, f"{node['seconds']:.2f}", f"{ph['cpu_s']:.1f}", f"{rows / node['seconds']:,.0f}",
                    mb(ph["process_kb"]), "+" + mb(ph["raised_kb"]), mb(ph["tree_kb"])], widths))
    ph = pipe["phases"].get("runner", empty)
    print(_row(["orchestrator", "", f"{ph['cpu_s']:.1f}", "", mb(ph["process_kb"]),
                "+" + mb(ph["raised_kb"]), mb(ph["tree_kb"])], widths))
    print(_row(["3 components", f"{total:.2f}", f"{cpu:.1f}", f"{rows / total:,.0f}",
                mb(pipe["peak_process_kb"]), "", mb(pipe["peak_tree_kb"])], widths))
    if base:
        print(_row(["pyarrow.csv.read_csv", f"{base['seconds']:.2f}", "", f"{rows / base['seconds']:,.0f}",
                    mb(base["peak_process_kb"]), "", ""], widths))
    startup = pipe["phases"].get("startup", empty)["process_kb"]
    print(f"  peak RSS: the largest process while the step ran (with what earlier steps left); raised\n"
          f"  peak: how far the step raised it; tree RSS: summed over the child and its worker processes "
          f"({pipe['processes']} at most).\n"
          f"  orchestrator: between and before nodes (MLMD, cache keys; a node's wall time includes its\n"
          f"  key). Whole child {pipe['wall_seconds']:.1f}s with interpreter start and imports, RSS "
          f"{mb(startup)} after importing conveyor. {pipe['load'][0].upper() + pipe['load'][1:]}.")
    if base:
        print(f"  Baseline: table of {base['table_bytes'] / 2**20:,.0f} MB in memory, "
              f"{size / 1e6 / base['seconds']:,.0f} MB/s of CSV.")
        print(f"ratio Conveyor / pyarrow parse: time {total / base['seconds']:.1f}x, "
              f"peak memory {pipe['peak_process_kb'] / base['peak_process_kb']:.1f}x")
    scale = rows / TFX_ROWS
    tfx_seconds = TFX_SECONDS * scale
    target_seconds = tfx_seconds / TARGET_SPEEDUP
    note = "" if rows == TFX_ROWS else f"; time scaled linearly to {rows:,} rows (unfair: fixed costs)"
    print(f"TFX reference (1.5M rows, 2 cores, Beam 2.61, 2 workers): {TFX_SECONDS:.0f}s, "
          f"peak {TFX_PEAK_KB / 2**20:.1f} GB in one process{note}")
    ok_time = total <= target_seconds
    ok_mem = pipe["peak_process_kb"] <= TARGET_PEAK_KB
    print(f"vs TFX: {tfx_seconds / total:.1f}x faster (target >= {TARGET_SPEEDUP}x, i.e. <= "
          f"{target_seconds:.1f}s: {'MET' if ok_time else 'MISSED'}); peak memory "
          f"{pipe['peak_process_kb'] / TFX_PEAK_KB:.2f} of TFX's (target <= "
          f"{TARGET_PEAK_KB / 2**20:.1f} GB: {'MET' if ok_mem else 'MISSED'})")


def print_sweep(results: list[tuple[int, dict, dict]]) -> None:
    print("\n=== sweep: does memory grow with N?")
    widths = [10, 7, 8, 8, 8, 9, 10, 10, 10, 10, 11, 11]
    print(_row(["rows", "EG s", "Stats s", "Schema s", "total s", "rows/s", "orch +pk", "EG +pk", "Stats +pk",
                "peak RSS", "pyarrow s", "pyarrow pk"], widths))
    for rows, pipe, base in results:
        sec = [pipe["nodes"][c]["seconds"] for c in COMPONENTS]
        ph = pipe["phases"]
        print(_row([
            f"{rows:,}", *(f"{s:.2f}" for s in sec), f"{sum(sec):.2f}", f"{rows / sum(sec):,.0f}",
            mb(ph.get("runner", {}).get("raised_kb", 0)),
            mb(ph.get("csv_example_gen", {}).get("raised_kb", 0)),
            mb(ph.get("statistics_gen", {}).get("raised_kb", 0)),
            mb(pipe["peak_process_kb"]),
            f"{base['seconds']:.2f}" if base else "-", mb(base["peak_process_kb"]) if base else "-",
        ], widths))
    (n0, p0, b0), (n1, p1, b1) = results[0], results[-1]
    if n1 != n0:
        per_m = (p1["peak_process_kb"] - p0["peak_process_kb"]) / 1024 / ((n1 - n0) / 1e6)
        base_per_m = (b1["peak_process_kb"] - b0["peak_process_kb"]) / 1024 / ((n1 - n0) / 1e6) if b0 else 0.0
        print(f"(+pk: how far each step raised the peak RSS.) Peak memory from {n0:,} to {n1:,} rows: "
              f"Conveyor {per_m:+,.0f} MB per million rows "
              f"({p1['peak_process_kb'] / p0['peak_process_kb']:.2f}x for {n1 / n0:.1f}x the rows); "
              f"pyarrow read_csv {base_per_m:+,.0f} MB per million rows")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    # `--beam-arg --flag=value` would read the value as an option: join the pair.
    joined: list[str] = []
    it = iter(argv)
    for token in it:
        if token == "--beam-arg":
            value = next(it, None)
            if value is None:
                sys.exit("--beam-arg needs a value, e.g. --beam-arg --direct_num_workers=2")
            token = f"--beam-arg={value}"
        joined.append(token)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=TFX_ROWS, help="rows of the CSV (default 1,500,000)")
    parser.add_argument("--sweep", default="", help="comma-separated row counts, e.g. 250000,500000,1500000")
    parser.add_argument("--beam-arg", action="append", default=[], dest="beam_args",
                        help="a Beam pipeline arg passed to the pipeline (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--data-dir", default=os.environ.get("CONVEYOR_BENCH_DIR", DEFAULT_DATA_DIR),
                        help=f"where CSVs are cached and pipelines run (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the pipeline this many times per row count and report the fastest")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pyarrow baseline")
    parser.add_argument("--keep", action="store_true", help="keep the pipeline root (outputs, MLMD)")
    parser.add_argument("--verbose", action="store_true", help="show the pipeline's output")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(joined)
    args.beam_args = [a for value in args.beam_args for a in shlex.split(value)]
    try:
        args.counts = [int(x.replace("_", "")) for x in args.sweep.split(",") if x.strip()] or [args.rows]
    except ValueError:
        parser.error(f"--sweep takes comma-separated integers, got {args.sweep!r}")
    if any(n < 1 for n in args.counts):
        parser.error("row counts must be positive")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_pipeline"]:
        return _child_pipeline(argv[1])
    if argv[:1] == ["_baseline"]:
        return _child_baseline(argv[1], argv[2])
    args = _parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    print(f"Conveyor scale benchmark: CsvExampleGen -> StatisticsGen -> SchemaGen; python {sys.executable}; "
          f"{os.cpu_count()} CPUs; beam args {args.beam_args or '(DirectRunner defaults)'}")
    results = []
    for rows in args.counts:
        csv_path = taxi_csv(rows, args.data_dir, args.seed)
        runs = []
        for _ in range(max(1, args.repeat)):
            load = _load_note()
            print(f"\nrunning the pipeline on {rows:,} rows ({load}) ...", flush=True)
            run = measure_pipeline(os.path.dirname(csv_path), args.data_dir, args.beam_args, args.keep,
                                   args.verbose)
            run["load"] = load
            runs.append(run)
        pipe = min(runs, key=lambda r: sum(r["nodes"][c]["seconds"] for c in COMPONENTS))
        if len(runs) > 1:
            totals = [f"{sum(r['nodes'][c]['seconds'] for c in COMPONENTS):.2f}" for r in runs]
            print(f"3-component totals of the {len(runs)} runs: {', '.join(totals)} s; reporting the fastest")
        if args.no_baseline:
            base = {}
        else:
            print("running the pyarrow baseline ...", flush=True)
            base = measure_baseline(csv_path, args.data_dir)
        print_report(rows, csv_path, pipe, base)
        results.append((rows, pipe, base))
    if len(results) > 1:
        print_sweep(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"rows": r, "pipeline": p, "baseline": b} for r, p, b in results], f, indent=1)
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main(sys.argv[1:]))
