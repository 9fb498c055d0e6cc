"""How fast the code location loads, against a bare Dagster `Definitions` in the same run.

    .venv/bin/python bench/code_location.py [--runs 7] [--profile local|aws] [--src DIR]

Each measurement is a fresh interpreter (`python -c`, so nothing is imported yet) timing, with
perf_counter inside the child, one of:

- bare:          `import dagster as dg; dg.Definitions()`
- code_location: `import pinterest_platform.definitions` and the repository built from its `defs`
                 (`defs.get_repository_def()`, what `dagster definitions validate` and the UI do)

The two alternate, run after run, so a machine busy with something else slows both alike; the figure is
the median of `--runs` (default 7). The child also reports the heavy modules it imported (pyspark, pyarrow,
deltalake, pandas, boto3, botocore, confluent_kafka): loading the code location should import none (issue
13 item 6; pinterest_platform_tests/test_light_code_location.py asserts it). Target: code_location at most
1.5x bare. `--src DIR` loads pinterest_platform from another tree (e.g. a `git archive` of an older commit) with
the same venv. The last line is one JSON object:
{"bench": "code_location", "ratios": {"code_location_vs_bare_definitions": x}, "seconds": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

HEAVY = ("pyspark", "pyarrow", "deltalake", "pandas", "boto3", "botocore", "confluent_kafka")

SNIPPETS = {
    "bare": "import dagster as dg\ndg.Definitions()\n",
    "code_location": ("import pinterest_platform.definitions as definitions\n"
                      "definitions.defs.get_repository_def()\n"),
}

CHILD = """
import json, sys, time
src = {src!r}
if src:  # that tree, not the editable install's (its finder sits before sys.path on sys.meta_path)
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path.insert(0, src)
started = time.perf_counter()
exec(compile({code!r}, "<bench>", "exec"))
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def run_once(name: str, env: dict[str, str], src: str | None = None) -> tuple[float, float, list[str]]:
    """(seconds inside the child, wall seconds of the child process, heavy modules imported)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(code=SNIPPETS[name], heavy=HEAVY, src=src)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["seconds"], wall, report["heavy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per variant (median)")
    parser.add_argument("--profile", default=os.environ.get("PINTEREST_ENV", "local"), choices=["local", "aws"])
    parser.add_argument("--src", help="a source tree to load pinterest_platform from (default: the installed one)")
    args = parser.parse_args()

    env = {**os.environ, "PINTEREST_ENV": args.profile}
    src = str(Path(args.src).resolve()) if args.src else None
    for name in SNIPPETS:  # warm the file cache and write the .pyc files: no run pays for compiling
        run_once(name, env, src)
    inside: dict[str, list[float]] = {name: [] for name in SNIPPETS}
    walls: dict[str, list[float]] = {name: [] for name in SNIPPETS}
    heavy: dict[str, list[str]] = {}
    for _ in range(args.runs):
        for name in SNIPPETS:
            seconds, wall, imported = run_once(name, env, src)
            inside[name].append(seconds)
            walls[name].append(wall)
            heavy[name] = imported

    median = {name: statistics.median(values) for name, values in inside.items()}
    median_wall = {name: statistics.median(values) for name, values in walls.items()}
    ratio = median["code_location"] / median["bare"]
    rows = [[name, f"{median[name]:.3f}", f"{min(inside[name]):.3f}", f"{max(inside[name]):.3f}",
             f"{median_wall[name]:.3f}", f"{median[name] / median['bare']:.2f}x", ", ".join(heavy[name]) or "-"]
            for name in SNIPPETS]
    print(f"code location load, profile {args.profile}, median of {args.runs} fresh interpreters"
          + (f", source {args.src}" if args.src else ""))
    print(table(rows, ["variant", "median s", "min s", "max s", "process s", "vs bare", "heavy modules imported"]))
    print(f"\ncode_location / bare: {ratio:.2f}x (target <= 1.5x)")
    print(json.dumps({"bench": "code_location", "ratios": {"code_location_vs_bare_definitions": round(ratio, 3)},
                      "seconds": {name: round(value, 4) for name, value in median.items()},
                      "process_seconds": {name: round(value, 4) for name, value in median_wall.items()},
                      "heavy_imported": heavy["code_location"], "profile": args.profile, "runs": args.runs}))


if __name__ == "__main__":
    main()
