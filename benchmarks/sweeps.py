"""What a sweep costs against its runs: a 4-job sweep of the default run, sequential and with the joblib launcher,
against the same four runs as separate `python run.py` commands, all in this one session.

    python benchmarks/sweeps.py            # 4 jobs of the default digits run (optimizer.lr swept)
    python benchmarks/sweeps.py --quick    # 2 jobs of 2 epochs: checks the benchmark runs

Prints each command's wall time and two ratios. Targets (issue 15): sweep / sum of its runs ≤ 1.1 (a sweep may cost
no more than its runs one by one: it pays start-up once, and its parent run and report little); sequential sweep /
joblib sweep ≥ 1.6 on 2 cores (the launcher gives each of its n_jobs processes cores / n_jobs torch threads).

Also the most any 2-worker launcher could give these jobs: a sequential sweep of half the jobs measures what a job
costs inside a sweep (J = the difference / the jobs left out) and so what the sweep pays once (start-up, parent run,
summary: T - n J); perfect workers, two jobs at a time at full speed, would take T - n J / 2. That assumes a
sequential job keeps one core busy; its tracking process keeps the other one partly busy too, so the sequential
sweep's CPU time (its processes', as the OS counts them) divided by the cores is the tighter bound for any launcher.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.cores import cores

ROOT = Path(__file__).resolve().parents[1]
RATES = ["0.001", "0.002", "0.003", "0.004"]


def timed(arguments: list[str], folder: Path, name: str) -> float:
    env = {**os.environ, "PIPELINE_ROOT": str(folder)}
    command = [sys.executable, "run.py", *arguments, f"hydra.run.dir={folder}/{name}",
               f"hydra.sweep.dir={folder}/{name}"]
    start = time.time()
    result = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return time.time() - start


def children_cpu() -> float:
    """CPU seconds of every finished process this one started and the ones they waited for (a run's tracking
    process; not the joblib launcher's workers, which are killed without being waited for)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 jobs of 2 epochs")
    parser.add_argument("overrides", nargs="*", help="run.py overrides for every job (after --)")
    args = parser.parse_args()
    rates = RATES[:2] if args.quick else RATES
    common = args.overrides + (["trainer.max_epochs=2"] if args.quick else [])
    print(f"load average {open('/proc/loadavg').read().split()[0]}, {os.cpu_count()} CPUs, {len(rates)} jobs of "
          f"run.py {' '.join(common) or '(defaults)'}, optimizer.lr swept")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        timed([*common, "trainer.max_epochs=1"], folder, "first")  # creates the MLflow store, as a first run did
        runs = [timed([*common, f"optimizer.lr={rate}"], folder, f"run-{rate}") for rate in rates]
        swept = ["-m", *common, f"optimizer.lr={','.join(rates)}"]
        cpu_before = children_cpu()
        sequential = timed(swept, folder, "sweep")
        cpu = children_cpu() - cpu_before
        parallel = timed([*swept, "hydra/launcher=joblib"], folder, "joblib")
        half = rates[: len(rates) // 2]
        shorter = timed(["-m", *common, f"optimizer.lr={','.join(half)}"], folder, "half")
    total = sum(runs)
    job = (sequential - shorter) / (len(rates) - len(half))
    ideal = sequential - len(rates) * job / 2
    print(f"runs one by one: {' + '.join(f'{seconds:.1f}' for seconds in runs)} = {total:.1f} s")
    print(f"sweep (basic launcher): {sequential:.1f} s; sweep / sum of runs {sequential / total:.2f} (target ≤ 1.1)")
    print(f"sweep (joblib launcher): {parallel:.1f} s; sequential / joblib {sequential / parallel:.2f} "
          f"(target ≥ 1.6 on 2 cores)")
    print(f"a job inside the sweep {job:.1f} s (sweep of {len(half)}: {shorter:.1f} s), paid once "
          f"{sequential - len(rates) * job:.1f} s: perfect 2 workers {ideal:.1f} s, sequential / that "
          f"{sequential / ideal:.2f}")
    usable = cores()
    print(f"the sequential sweep used {cpu:.1f} s of CPU ({cpu / sequential:.2f} cores busy on average): on {usable} "
          f"cores that work takes at least {cpu / usable:.1f} s, sequential / that at most "
          f"{sequential * usable / cpu:.2f}")


if __name__ == "__main__":
    main()
