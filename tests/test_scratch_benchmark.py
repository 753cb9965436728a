"""benchmarks/scratch.py runs, in its quick mode, as its docstring's command would, so it cannot rot unseen."""
import importlib.util
import math
import re
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "scratch.py"
ROW = re.compile(r"^(.+?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", re.MULTILINE)


def test_quick_benchmark_prints_a_ratio_per_case():
    spec = importlib.util.spec_from_file_location("scratch_benchmark", SCRIPT)  # its case list: the rows to expect
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match[1]: [float(n) for n in match.groups()[1:]] for match in ROW.finditer(result.stdout)}
    assert set(rows) == {case.name for case in benchmark.CASES}, result.stdout
    for name, (torch_ms, scratch_ms, ratio) in rows.items():
        assert all(math.isfinite(n) and n > 0 for n in (torch_ms, scratch_ms, ratio)), name
        # The printed times are rounded to 0.001 ms and the ratio to 0.01: the ratio lies within what they allow
        # (a 0.039 ms row can be 0.0385..0.0395, 2.6 % apart).
        low, high = (scratch_ms - 5e-4) / (torch_ms + 5e-4), (scratch_ms + 5e-4) / (torch_ms - 5e-4)
        assert low - 0.005 <= ratio <= high + 0.005, (name, torch_ms, scratch_ms, ratio)


def test_quick_labs_time_a_torch_and_a_scratch_run_py():
    result = subprocess.run([sys.executable, str(SCRIPT), "--labs", "--quick", "--threads", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line.split() for line in result.stdout.splitlines() if line.startswith("digits_lenet")]
    torch_s, scratch_s, ratio = map(float, row[1:])
    assert torch_s > 0 and scratch_s > 0 and math.isclose(ratio, scratch_s / torch_s, rel_tol=0.05, abs_tol=0.01)
