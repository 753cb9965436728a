"""The fixed cost of one run: what `python run.py` costs beyond its epochs and the import floor, and where it goes.

    python benchmarks/overhead.py                      # the default digits run, MLflow and CSV logging
    python benchmarks/overhead.py --repeats 5 -- data=mnist model=mlp model.hidden=[64,128,64]
    python benchmarks/overhead.py --quick              # one repeat of 2 epochs: checks the benchmark runs

Measured in this one session, whole processes, medians over the repeats:
- floor: `python -c "import torch, pytorch_lightning"`, the least any Lightning run can cost;
- epochs: the run's epoch count times its median epoch (training and validation), from the run's own clock
  (PIPELINE_TIMINGS, see src/pipeline/timing.py); the first epoch's extra (warm-up, first step) is fixed cost;
- fixed cost = whole process − floor − epochs: what a sweep of small models pays again for every trial; also printed
  against the floor imported with the garbage collector paused, as run.py imports (its start-up beats the plain floor).
Target (issue 15): fixed cost ≤ 1.5 s. The breakdown lists the run's phases; "start-up above the floor" is the
time from launch to the first phase (imports beyond the floor, Hydra composing the config) minus the floor, and
"exit" is the time from the last phase to the process's end (interpreter shutdown, MLflow's exit hooks).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = [sys.executable, "-c", "import torch, pytorch_lightning"]
# run.py imports them with the garbage collector paused (src/pipeline/collector.py): the same floor, imported so.
PAUSED_FLOOR = [sys.executable, "-c", "import gc; gc.disable(); import torch, pytorch_lightning"]
LOGGERS = {"mlflow": [], "csv": ["logger=csv"]}


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.time()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.time() - start


def one_run(overrides: list[str], folder: Path, index) -> dict:
    """One `python run.py` in `folder` (its MLflow store): its wall time, phases and epoch times."""
    timings = folder / f"timings-{index}.json"
    env = {**os.environ, "PIPELINE_ROOT": str(folder), "PIPELINE_TIMINGS": str(timings)}
    command = [sys.executable, "run.py", *overrides, f"hydra.run.dir={folder}/run-{index}"]
    launched = time.time()
    try:
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    except subprocess.CalledProcessError as error:
        sys.exit(f"run.py {' '.join(overrides)} failed:\n{error.stderr[-3000:]}")
    ended = time.time()
    recorded = json.loads(timings.read_text())
    phases = recorded["phases"]
    marks = recorded["epochs"]
    epoch_times = [later - earlier for earlier, later in zip(marks, marks[1:])]
    return {"wall": ended - launched, "start-up": phases[0][1] - launched,
            "phases": {name: end - start for name, start, end in phases},
            "exit": ended - max(end for _, _, end in phases),
            "epochs": len(epoch_times) * statistics.median(epoch_times), "epoch count": len(epoch_times)}


def median_of(runs: list[dict], key: str, phase: str | None = None) -> float:
    return statistics.median(run["phases"].get(phase, 0.0) if phase else run[key] for run in runs)


def report(name: str, runs: list[dict], floor: float, paused_floor: float) -> float:
    wall, epochs = median_of(runs, "wall"), median_of(runs, "epochs")
    fixed = wall - floor - epochs
    print(f"\n{name}: whole run {wall:.2f} s = floor {floor:.2f} + {runs[0]['epoch count']} epochs {epochs:.2f} "
          f"+ fixed cost {fixed:.2f} s  (target ≤ 1.50: {'met' if fixed <= 1.5 else 'missed'})")
    print(f"  above the floor imported with the collector paused ({paused_floor:.2f} s), as run.py imports: "
          f"{wall - paused_floor - epochs:.2f} s")
    print(f"  {'start-up above the floor':<26}{median_of(runs, 'start-up') - floor:7.2f} s")
    for phase in runs[0]["phases"]:
        print(f"  {phase:<26}{median_of(runs, '', phase):7.2f} s")
    print(f"  {'exit':<26}{median_of(runs, 'exit'):7.2f} s")
    return fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loggers", nargs="+", default=list(LOGGERS), choices=list(LOGGERS))
    parser.add_argument("--quick", action="store_true", help="one repeat of 2 epochs")
    parser.add_argument("overrides", nargs="*", help="run.py overrides (after --)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    overrides = args.overrides + (["trainer.max_epochs=2"] if args.quick else [])
    print(f"load average {open('/proc/loadavg').read().split()[0]}, {os.cpu_count()} CPUs, "
          f"{repeats} repeat(s), run.py {' '.join(overrides) or '(defaults)'}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if "mlflow" in args.loggers:  # creates the MLflow store once, as a user's first run did
            one_run(["trainer.max_epochs=1"], folder, "first")
        floor = statistics.median(timed(FLOOR) for _ in range(repeats))
        paused_floor = statistics.median(timed(PAUSED_FLOOR) for _ in range(repeats))
        runs = {name: [] for name in args.loggers}
        for index in range(repeats):  # interleaved: a load spike hits every kind alike
            for name in args.loggers:
                runs[name].append(one_run(overrides + LOGGERS[name], folder, f"{name}-{index}"))
        print(f"import floor ({' '.join(FLOOR[2:])}): {floor:.2f} s")
        for name, measured in runs.items():
            report(f"logger={name}", measured, floor, paused_floor)


if __name__ == "__main__":
    main()
