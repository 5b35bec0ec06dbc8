"""Scale benchmark: Conveyor and TFX on one big taxi CSV, back to back.

    .venv/bin/python bench/scale.py                      # ExampleGen+StatisticsGen+SchemaGen, 1,500,000 rows
    .venv/bin/python bench/scale.py --rows 200000        # quicker
    .venv/bin/python bench/scale.py --whole              # the whole taxi pipeline, 1.5M rows, 1,000 steps
    .venv/bin/python bench/scale.py --sweep 1500000,15000000   # Conveyor alone: does memory grow with N?
    .venv/bin/python bench/scale.py --beam-arg --direct_num_workers=2 \\
        --tfx-beam-arg --direct_running_mode=multi_processing --tfx-beam-arg --direct_num_workers=2

Default mode: CsvExampleGen -> StatisticsGen -> SchemaGen, run by Conveyor
(LocalRunner, in a child process), then by TFX (bench/peers/tfx_taxi.py
--components 3, LocalDagRunner, from the venv bench/peers/setup_tfx.sh
builds), then pyarrow.csv.read_csv of the same file as a floor. Each is a
fresh process on a fresh root, timed from start to exit, its process tree's
RSS (Beam workers included) sampled from here. Targets: Conveyor >= 20x
faster than TFX (whole process) at <= 1/3 of its peak memory (process tree).

--whole: the taxi pipeline of examples/taxi (CONVEYOR_TAXI_DATA=the CSV) and TFX's
twin on the same big CSV, 1,000 train / 150 eval steps. Targets: >= 10x
faster at <= 1/3 of TFX's peak memory.

--sweep: Conveyor alone at several row counts; target: the peak at 15M rows
<= 1.3x the peak at 1.5M.

Without the TFX venv, the peer is reported as not measured: there is no
stored TFX figure to fall back on. The CSV is generated once per row count
and cached (see --data-dir).
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

from _common import BENCH_DIR, REPO, gb, load_average, mb, measure, taxi_csv  # noqa: E402
from _peer import NOT_MEASURED, TFX_BEAM_ARGS, ratio_line, tfx_python  # noqa: E402
from e2e import compare_taxi, run_tfx  # noqa: E402

COMPONENTS = ("csv_example_gen", "statistics_gen", "schema_gen")
DEFAULT_ROWS = 1_500_000
TARGET_SPEEDUP = 20  # 3 components: Conveyor's whole-process wall <= 1/20 of TFX's
TARGET_SPEEDUP_WHOLE = 10  # --whole
TARGET_MEMORY = 1 / 3  # peak RSS of the process tree, both modes
TARGET_SWEEP_GROWTH = 1.3  # --sweep: peak at 15M rows <= 1.3x the peak at 1.5M


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
    m = measure(cmd, on_line=_phase_tracker(verbose), stderr_path=stderr_path)
    if m.code != 0 or not os.path.exists(result_path):
        _fail(f"the pipeline (root {root})", stderr_path)
    with open(result_path) as f:
        report = json.load(f)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    assert m.sampler is not None
    report.update(
        wall_seconds=m.wall_s, cpu_seconds=m.cpu_s, phases=m.sampler.phases, peak_tree_kb=m.peak_tree_kb,
        # ru_maxrss covers the last moments the sampler cannot see (the child has exited).
        peak_process_kb=max(m.peak_process_kb, report["maxrss_self_kb"], report["maxrss_children_kb"]),
        processes=m.processes, load=m.load_before,
    )
    report["peak_tree_kb"] = max(report["peak_tree_kb"], report["peak_process_kb"])
    return report


def measure_tfx(python: str, input_base: str, work_dir: str, beam_args: list[str], keep: bool) -> dict:
    root = tempfile.mkdtemp(prefix="tfx-", dir=work_dir)
    try:
        run = run_tfx(python, input_base, root, 0, 0, beam_args, os.path.join(work_dir, "tfx.stderr"),
                      components="3")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "nodes": {name: {"state": state, "seconds": seconds} for name, state, seconds in run.nodes.values()},
        "wall_seconds": run.m.wall_s, "cpu_seconds": run.m.cpu_s, "peak_tree_kb": run.m.peak_tree_kb,
        "peak_process_kb": run.m.peak_process_kb, "processes": run.m.processes, "load": run.m.load_before,
    }


def measure_baseline(csv_path: str, work_dir: str) -> dict:
    fd, result_path = tempfile.mkstemp(prefix="baseline-", suffix=".json", dir=work_dir)
    os.close(fd)
    stderr_path = os.path.join(work_dir, "baseline.stderr")
    cmd = [sys.executable, os.path.abspath(__file__), "_baseline", csv_path, result_path]
    m = measure(cmd, on_line=_phase_tracker(False), stderr_path=stderr_path)
    if m.code != 0:
        _fail("the pyarrow baseline", stderr_path)
    with open(result_path) as f:
        report = json.load(f)
    os.remove(result_path)
    report["wall_seconds"] = m.wall_s
    report["peak_process_kb"] = max(m.peak_process_kb, report["maxrss_self_kb"])
    return report


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_report(rows: int, csv_path: str, pipe: dict, tfx: dict | None, base: dict) -> None:
    size = os.path.getsize(csv_path)
    print(f"\n=== {rows:,} rows, {size / 1e6:,.0f} MB CSV ({csv_path})")
    split_rows = sum(pipe["row_counts"].values())
    if split_rows != rows:
        sys.exit(f"CsvExampleGen wrote {split_rows:,} rows ({pipe['row_counts']}), expected {rows:,}.")
    print("Conveyor, per component:")
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
    startup = pipe["phases"].get("startup", empty)["process_kb"]
    print(f"  peak RSS: the largest process while the step ran (with what earlier steps left); raised\n"
          f"  peak: how far the step raised it; tree RSS: summed over the child and its worker processes "
          f"({pipe['processes']} at most).\n"
          f"  orchestrator: between and before nodes (MLMD, cache keys; a node's wall time includes its\n"
          f"  key). RSS {mb(startup)} after importing conveyor.")
    if tfx:
        print("TFX, per component (its MLMD execution times): " + ", ".join(
            f"{name} {n['seconds']:.1f} s" if n["seconds"] is not None else f"{name} {n['state']}"
            for name, n in tfx["nodes"].items()))

    w = [34, 12, 12, 12]
    print(f"\n{'whole process (start to exit)':<{w[0]}}{'Conveyor':>{w[1]}}{'TFX':>{w[2]}}{'pyarrow':>{w[3]}}")
    rows_out = [
        ("wall", f"{pipe['wall_seconds']:.1f} s", f"{tfx['wall_seconds']:.1f} s" if tfx else "-",
         f"{base['wall_seconds']:.1f} s" if base else "-"),
        ("CPU", f"{pipe['cpu_seconds']:.1f} s", f"{tfx['cpu_seconds']:.1f} s" if tfx else "-", "-"),
        ("peak RSS, process tree", gb(pipe["peak_tree_kb"]), gb(tfx["peak_tree_kb"]) if tfx else "-", "-"),
        ("peak RSS, largest process", gb(pipe["peak_process_kb"]), gb(tfx["peak_process_kb"]) if tfx else "-",
         gb(base["peak_process_kb"]) if base else "-"),
        ("processes at most", str(pipe["processes"]), str(tfx["processes"]) if tfx else "-", "1" if base else "-"),
        ("load average before", pipe["load"].split()[0], tfx["load"].split()[0] if tfx else "-", "-"),
    ]
    for label, *cells in rows_out:
        print(f"{label:<{w[0]}}" + "".join(f"{c:>{wi}}" for c, wi in zip(cells, w[1:], strict=True)))
    if base:
        print(f"  pyarrow: read_csv alone ({base['seconds']:.2f} s inside the process; table of "
              f"{base['table_bytes'] / 2**20:,.0f} MB), a floor, not a target.")
    print()
    print(ratio_line("whole-process wall", pipe["wall_seconds"], tfx["wall_seconds"] if tfx else None,
                     f"<= {1 / TARGET_SPEEDUP:.3f}x, i.e. >= {TARGET_SPEEDUP}x faster",
                     lambda r: r <= 1 / TARGET_SPEEDUP))
    if tfx:
        print(f"  = {tfx['wall_seconds'] / pipe['wall_seconds']:.1f}x faster; the 3 components' node times "
              f"alone: Conveyor {total:.1f} s, TFX {sum(n['seconds'] or 0 for n in tfx['nodes'].values()):.1f} s")
    print(ratio_line("peak RSS of the process tree", pipe["peak_tree_kb"], tfx["peak_tree_kb"] if tfx else None,
                     f"<= {TARGET_MEMORY:.3f}x", lambda r: r <= TARGET_MEMORY))


def print_sweep(results: list[tuple[int, dict, dict]]) -> None:
    print("\n=== sweep (Conveyor alone): does memory grow with N?")
    widths = [11, 7, 8, 8, 8, 9, 10, 10, 10, 10, 10, 11, 11]
    print(_row(["rows", "EG s", "Stats s", "Schema s", "total s", "rows/s", "orch +pk", "EG +pk", "Stats +pk",
                "peak RSS", "tree RSS", "pyarrow s", "pyarrow pk"], widths))
    for rows, pipe, base in results:
        sec = [pipe["nodes"][c]["seconds"] for c in COMPONENTS]
        ph = pipe["phases"]
        print(_row([
            f"{rows:,}", *(f"{s:.2f}" for s in sec), f"{sum(sec):.2f}", f"{rows / sum(sec):,.0f}",
            mb(ph.get("runner", {}).get("raised_kb", 0)),
            mb(ph.get("csv_example_gen", {}).get("raised_kb", 0)),
            mb(ph.get("statistics_gen", {}).get("raised_kb", 0)),
            mb(pipe["peak_process_kb"]), mb(pipe["peak_tree_kb"]),
            f"{base['seconds']:.2f}" if base else "-", mb(base["peak_process_kb"]) if base else "-",
        ], widths))
    (n0, p0, b0), (n1, p1, b1) = results[0], results[-1]
    if n1 != n0:
        per_m = (p1["peak_tree_kb"] - p0["peak_tree_kb"]) / 1024 / ((n1 - n0) / 1e6)
        base_per_m = (b1["peak_process_kb"] - b0["peak_process_kb"]) / 1024 / ((n1 - n0) / 1e6) if b0 else 0.0
        growth = p1["peak_tree_kb"] / p0["peak_tree_kb"]
        pyarrow = f"; pyarrow read_csv {base_per_m:+,.0f} MB per million rows" if b0 and b1 else ""
        print(f"(+pk: how far each step raised the peak RSS.) Peak RSS of the process tree from {n0:,} to "
              f"{n1:,} rows: Conveyor {per_m:+,.0f} MB per million rows{pyarrow}")
        verdict = "MET" if growth <= TARGET_SWEEP_GROWTH else "MISSED"
        note = "" if (n0, n1) == (1_500_000, 15_000_000) else " (the target is stated for 1.5M -> 15M rows)"
        print(f"peak at {n1:,} / peak at {n0:,} rows = {growth:.2f}x for {n1 / n0:.1f}x the rows "
              f"(target <= {TARGET_SWEEP_GROWTH}x): {verdict}{note}")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    # `--beam-arg --flag=value` would read the value as an option: join the pair.
    joined: list[str] = []
    it = iter(argv)
    for token in it:
        if token in ("--beam-arg", "--tfx-beam-arg"):
            value = next(it, None)
            if value is None:
                sys.exit(f"{token} needs a value, e.g. {token} --direct_num_workers=2")
            token = f"{token}={value}"
        joined.append(token)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the CSV (default 1,500,000)")
    parser.add_argument("--whole", action="store_true",
                        help="run the whole taxi pipeline (both tools) instead of the first 3 components")
    parser.add_argument("--train-steps", type=int, default=1000, help="--whole: training steps (default 1,000)")
    parser.add_argument("--eval-steps", type=int, default=150, help="--whole: eval steps (default 150)")
    parser.add_argument("--sweep", default="",
                        help="comma-separated row counts (Conveyor alone), e.g. 1500000,15000000")
    parser.add_argument("--beam-arg", action="append", default=[], dest="beam_args",
                        help="a Beam pipeline arg for Conveyor's pipeline (repeatable)")
    parser.add_argument("--tfx-beam-arg", action="append", default=None, dest="tfx_beam_args",
                        help=f"a Beam pipeline arg for TFX's pipeline (repeatable; default {' '.join(TFX_BEAM_ARGS)})")
    parser.add_argument("--no-peer", action="store_true", help="measure Conveyor only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--data-dir", default=BENCH_DIR,
                        help=f"where CSVs are cached and pipelines run (default {BENCH_DIR}, or $CONVEYOR_BENCH_DIR)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each tool this many times per row count and report each one's fastest")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pyarrow baseline")
    parser.add_argument("--keep", action="store_true", help="keep the pipeline roots (outputs, MLMD)")
    parser.add_argument("--verbose", action="store_true", help="show Conveyor's pipeline output")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(joined)
    args.beam_args = [a for value in args.beam_args for a in shlex.split(value)]
    args.tfx_beam_args = TFX_BEAM_ARGS if args.tfx_beam_args is None else [
        a for value in args.tfx_beam_args for a in shlex.split(value)]
    try:
        args.counts = [int(x.replace("_", "")) for x in args.sweep.split(",") if x.strip()] or [args.rows]
    except ValueError:
        parser.error(f"--sweep takes comma-separated integers, got {args.sweep!r}")
    if any(n < 1 for n in args.counts):
        parser.error("row counts must be positive")
    if args.whole and args.sweep:
        parser.error("--whole and --sweep do not go together")
    return args


def main_whole(args: argparse.Namespace) -> int:
    csv_path = taxi_csv(args.rows, args.data_dir, args.seed)
    runs = compare_taxi(
        data_root=os.path.dirname(csv_path), rows_note=f"{args.rows:,} rows ({csv_path})",
        train_steps=args.train_steps, eval_steps=args.eval_steps, beam_args=args.beam_args,
        tfx_beam_args=args.tfx_beam_args, cached_rerun=False, work_dir=os.path.join(args.data_dir, "whole"),
        keep=args.keep, with_peer=not args.no_peer,
    )
    ours, theirs = runs["conveyor_first"].m, (runs["tfx_first"].m if "tfx_first" in runs else None)
    print()
    print(ratio_line("whole-process wall", ours.wall_s, theirs.wall_s if theirs else None,
                     f"<= {1 / TARGET_SPEEDUP_WHOLE:.2f}x, i.e. >= {TARGET_SPEEDUP_WHOLE}x faster",
                     lambda r: r <= 1 / TARGET_SPEEDUP_WHOLE))
    if theirs:
        print(f"  = {theirs.wall_s / ours.wall_s:.1f}x faster")
    print(ratio_line("peak RSS of the process tree", ours.peak_tree_kb, theirs.peak_tree_kb if theirs else None,
                     f"<= {TARGET_MEMORY:.3f}x", lambda r: r <= TARGET_MEMORY))
    print(f"load average at the end: {load_average()} ({os.cpu_count()} cores; other work inflates wall times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({key: {k: v for k, v in vars(run.m).items() if k not in ("sampler", "stdout")} | {
                "nodes": run.nodes} for key, run in runs.items()}, f, indent=1)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_pipeline"]:
        return _child_pipeline(argv[1])
    if argv[:1] == ["_baseline"]:
        return _child_baseline(argv[1], argv[2])
    args = _parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    if args.whole:
        return main_whole(args)
    sweep = len(args.counts) > 1
    python = None if (sweep or args.no_peer) else tfx_python()
    print(f"Conveyor scale benchmark: CsvExampleGen -> StatisticsGen -> SchemaGen; {os.cpu_count()} CPUs\n"
          f"  Conveyor: {sys.executable}; Beam args {args.beam_args or '(none: DirectRunner defaults)'}")
    if sweep:
        print("  TFX: not run (--sweep compares Conveyor with itself)")
    elif python:
        print(f"  TFX 1.16.0: {python} bench/peers/tfx_taxi.py --components 3; Beam args {args.tfx_beam_args}")
    else:
        print(f"  TFX: {NOT_MEASURED if not args.no_peer else 'not measured (--no-peer)'}")
    results = []
    for rows in args.counts:
        csv_path = taxi_csv(rows, args.data_dir, args.seed)
        runs, tfx_runs = [], []
        for _ in range(max(1, args.repeat)):
            print(f"\nrunning Conveyor on {rows:,} rows (load average {load_average()}) ...", flush=True)
            runs.append(measure_pipeline(os.path.dirname(csv_path), args.data_dir, args.beam_args, args.keep,
                                         args.verbose))
            print(f"  {runs[-1]['wall_seconds']:.1f} s", flush=True)
            if python:
                print(f"running TFX on {rows:,} rows (load average {load_average()}) ...", flush=True)
                tfx_runs.append(measure_tfx(python, os.path.dirname(csv_path), args.data_dir, args.tfx_beam_args,
                                            args.keep))
                print(f"  {tfx_runs[-1]['wall_seconds']:.1f} s", flush=True)
        pipe = min(runs, key=lambda r: r["wall_seconds"])
        tfx = min(tfx_runs, key=lambda r: r["wall_seconds"]) if tfx_runs else None
        if len(runs) > 1:
            walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in runs)
            tfx_walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in tfx_runs)
            print(f"whole-process walls of the {len(runs)} runs: Conveyor {walls} s"
                  + (f"; TFX {tfx_walls} s" if tfx_runs else "") + "; reporting each one's fastest")
        if args.no_baseline:
            base = {}
        else:
            print("running the pyarrow baseline ...", flush=True)
            base = measure_baseline(csv_path, args.data_dir)
        print_report(rows, csv_path, pipe, tfx, base)
        results.append((rows, pipe, base))
    if sweep:
        print_sweep(results)
    print(f"load average at the end: {load_average()} ({os.cpu_count()} cores; other work inflates wall times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"rows": r, "pipeline": p, "baseline": b} for r, p, b in results], f, indent=1)
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main(sys.argv[1:]))
