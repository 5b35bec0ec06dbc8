"""Fault benchmark: the taxi pipeline interrupted at a random moment, then resumed.

    .venv/bin/python bench/faults.py                 # 20 runs, SIGKILL and SIGINT alternating
    .venv/bin/python bench/faults.py --runs 4 --signals kill --launcher process

First one uninterrupted run on a fresh root (the reference time). Then, K
times on a fresh root: `conveyor run examples/taxi/pipeline.py`, a signal
after a random delay (uniform over the reference run's length), then
`conveyor run` again to completion. After each resume it checks, from MLMD
and the files:

- completed correctly: the resume exited 0 and every node is COMPLETE or CACHED;
- LIVE artifacts pointing at partial output: a LIVE artifact under the root
  whose directory lacks its completion marker (target 0);
- partial models in the serving directory: anything there but numbered
  versions holding a saved_model.pb (target 0);
- RUNNING executions left (target 0);
- processes of the interrupted run (nodes, the fork server, Beam workers)
  still running 5 s after it ended (target 0), and how long it took to stop;
- the extra time a resume costs: time until the signal plus the resume,
  minus the uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO, "examples", "taxi", "pipeline.py")
CONVEYOR = [sys.executable, "-m", "conveyor.cli", "run", PIPELINE]
_STATE = re.compile(r"^  (\S+)\s+(COMPLETE|CACHED|FAILED|CANCELED|resolved)")


def _env(root: str, args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "CONVEYOR_TAXI_ROOT": root, "CONVEYOR_TAXI_TRAIN_STEPS": str(args.train_steps),
            "CONVEYOR_TAXI_EVAL_STEPS": str(args.eval_steps)}


def _run(root: str, args: argparse.Namespace) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([*CONVEYOR, "--launcher", args.launcher], env=_env(root, args), capture_output=True,
                          text=True, cwd=REPO)
    return proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr


def _interrupted(root: str, args: argparse.Namespace, delay: float, sig: int) -> tuple[float, float, int]:
    """Start a run, send `sig` after `delay` seconds: the time until it
    ended, how long it took to stop after the signal, and how many of its
    processes (anything with its root in the environment: nodes, the fork
    server, Beam workers) still ran 5 s after it ended."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*CONVEYOR, "--launcher", args.launcher], env=_env(root, args), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = 0.0
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        t_sig = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=120)
        stop = time.monotonic() - t_sig
    ended = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while _processes_of(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    return ended, stop, len(_processes_of(root))


def _processes_of(root: str) -> list[int]:
    """Live processes whose environment names this run's root."""
    marker = f"CONVEYOR_TAXI_ROOT={root}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat", "rb") as st:
                        if st.read().rpartition(b")")[2].split()[0] != b"Z":
                            found.append(int(entry))
        except OSError:
            continue
    return found


def _check(root: str) -> dict[str, int]:
    from ml_metadata.proto import metadata_store_pb2 as pb

    from conveyor import fs
    from conveyor.metadata.store import Metadata

    md = Metadata(os.path.join(root, "metadata.sqlite"))
    partial_artifacts = 0
    for a in md.store.get_artifacts():
        if a.state == pb.Artifact.LIVE and a.uri.startswith(root + os.sep) and not fs.is_complete(a.uri):
            partial_artifacts += 1
    serving = os.path.join(root, "serving_model")
    partial_models = 0
    if os.path.isdir(serving):
        for name in os.listdir(serving):
            if not (name.isdigit() and os.path.isfile(os.path.join(serving, name, "saved_model.pb"))):
                partial_models += 1
    running = sum(e.last_known_state == pb.Execution.RUNNING for e in md.store.get_executions())
    return {"partial_artifacts": partial_artifacts, "partial_models": partial_models, "running": running}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--signals", default="kill,int", help="comma-separated: kill (SIGKILL), int (SIGINT), "
                                                               "term (SIGTERM); used in turn")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--launcher", choices=["fork", "thread", "process"], default="fork")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "conveyor-bench", "faults"))
    args = parser.parse_args()
    sigs = [{"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}[s] for s in args.signals.split(",")]
    rng = random.Random(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)

    root = tempfile.mkdtemp(prefix="reference-", dir=args.work_dir)
    code, reference, out = _run(root, args)
    shutil.rmtree(root, ignore_errors=True)
    if code != 0:
        sys.exit(f"the uninterrupted run failed:\n{out[-3000:]}")
    print(f"uninterrupted run: {reference:.1f} s ({args.train_steps} training steps, launcher {args.launcher}; "
          f"load average {os.getloadavg()[0]:.2f})")
    totals = {"completed": 0, "partial_artifacts": 0, "partial_models": 0, "running": 0, "survivors": 0}
    extra: list[float] = []
    stops: list[float] = []
    for i in range(args.runs):
        sig = sigs[i % len(sigs)]
        delay = rng.uniform(1.0, reference)
        root = tempfile.mkdtemp(prefix=f"run{i}-", dir=args.work_dir)
        try:
            before, stop, survivors = _interrupted(root, args, delay, sig)
            code, resumed, out = _run(root, args)
            states = {m.group(1): m.group(2) for m in map(_STATE.match, out.splitlines()) if m}
            ok = code == 0 and states and all(s in ("COMPLETE", "CACHED", "resolved") for s in states.values())
            found = _check(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        totals["completed"] += bool(ok)
        totals["survivors"] += survivors
        if stop:
            stops.append(stop)
        for k, v in found.items():
            totals[k] += v
        extra.append(before + resumed - reference)
        cached = sum(s == "CACHED" for s in states.values())
        print(f"run {i + 1:>2}: {signal.Signals(sig).name} after {delay:5.1f} s, stopped in {stop:4.1f} s, "
              f"{survivors} of its processes left; resume {resumed:5.1f} s "
              f"({cached} cached), {'completed' if ok else 'FAILED'}; partial artifacts {found['partial_artifacts']}, "
              f"partial models {found['partial_models']}, RUNNING left {found['running']}", flush=True)
    n = args.runs
    print(f"\nruns completed correctly: {totals['completed']}/{n}")
    print(f"LIVE artifacts pointing at partial output: {totals['partial_artifacts']} (target 0)")
    print(f"partial models in the serving directory: {totals['partial_models']} (target 0)")
    print(f"RUNNING executions left: {totals['running']} (target 0)")
    print(f"processes left running 5 s after an interrupted run ended: {totals['survivors']} (target 0)")
    if stops:
        print(f"time from the signal until the run had stopped: mean {sum(stops) / len(stops):.1f} s, "
              f"max {max(stops):.1f} s")
    if extra:
        print(f"extra time of interrupt + resume over an uninterrupted run: mean {sum(extra) / n:.1f} s, "
              f"max {max(extra):.1f} s (uninterrupted {reference:.1f} s)")
    return 0 if totals["completed"] == n and not (totals["partial_artifacts"] or totals["partial_models"]
                                                   or totals["running"] or totals["survivors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
