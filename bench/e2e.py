"""End-to-end benchmark: the full taxi pipeline, then a fully cached re-run.

    .venv/bin/python bench/e2e.py                  # 1,000 training steps, 150 eval steps (TFX's taxi example)
    .venv/bin/python bench/e2e.py --train-steps 100 --eval-steps 20

Each run is `conveyor run examples/taxi/pipeline.py` in a fresh process on a
fresh pipeline root, timed from outside (process start to exit, as a user
sees it). Prints the wall time of both runs, the time each component took,
and the ratios against TFX's own taxi pipeline measured on this kind of
machine (2 cores, Beam 2.61).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO, "examples", "taxi", "pipeline.py")
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]

# TFX 1.16's taxi pipeline (1,000 train / 150 eval steps) on 2 cores, Beam 2.61.
TFX_FIRST_S = 163.0
TFX_CACHED_S = 11.3
TARGET_FIRST = 1 / 3
TARGET_CACHED = 1 / 10

_LINE = re.compile(r"^  (\S+)\s+(COMPLETE in ([\d.]+)s|CACHED|resolved|FAILED)")


def _run(root: str, env: dict[str, str], extra: list[str]) -> tuple[float, dict[str, str], str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [*CONVEYOR, "run", PIPELINE, *extra], env=env, capture_output=True, text=True, cwd=REPO
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pipeline run failed (exit {proc.returncode})")
    per_component: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        if m:
            per_component[m.group(1)] = f"{float(m.group(3)):.1f} s" if m.group(3) else m.group(2)
    return seconds, per_component, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=150)
    parser.add_argument("--root", help="pipeline root (default: a fresh temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the pipeline root")
    parser.add_argument("beam_args", nargs="*", help="Beam flags passed to every Beam component")
    args = parser.parse_args()

    root = args.root or tempfile.mkdtemp(prefix="conveyor-e2e-")
    shutil.rmtree(root, ignore_errors=True)
    env = dict(os.environ)
    env.update(
        CONVEYOR_TAXI_ROOT=root,
        CONVEYOR_TAXI_TRAIN_STEPS=str(args.train_steps),
        CONVEYOR_TAXI_EVAL_STEPS=str(args.eval_steps),
    )
    try:
        first, first_parts, _ = _run(root, env, args.beam_args)
        cached, cached_parts, _ = _run(root, env, args.beam_args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"taxi pipeline, {args.train_steps} training steps, {args.eval_steps} eval steps, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'component':<32}{'first run':>14}{'cached re-run':>16}")
    for name in first_parts:
        print(f"{name:<32}{first_parts[name]:>14}{cached_parts.get(name, '-'):>16}")
    print(f"{'whole run (process wall time)':<32}{first:>12.1f} s{cached:>14.1f} s")
    scale = args.train_steps / 1000
    print(f"\nTFX reference: {TFX_FIRST_S:.0f} s first run, {TFX_CACHED_S} s fully cached "
          f"(1,000 / 150 steps{'' if scale == 1 else '; other step counts are not comparable'})")
    print(f"first run:  {first / TFX_FIRST_S:.2f}x TFX's time (target <= {TARGET_FIRST:.2f}x) "
          f"-> {'met' if first <= TFX_FIRST_S * TARGET_FIRST else 'NOT met'}")
    print(f"cached run: {cached / TFX_CACHED_S:.2f}x TFX's time (target <= {TARGET_CACHED:.2f}x) "
          f"-> {'met' if cached <= TFX_CACHED_S * TARGET_CACHED else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
