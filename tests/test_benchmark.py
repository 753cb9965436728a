"""benchmarks/throughput.py runs, in its tiny mode, as the README's command would, so it cannot rot unseen."""
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "throughput.py"
LOOP = r"(\S+) img/s \((\S+) s/epoch\)"
LINE = re.compile(rf"(\w+): plain {LOOP}, bare lightning {LOOP}, pipeline {LOOP}, ratio bare/plain (\S+), "
                  r"ratio pipeline/plain (\S+)")
DIGITS_TRAIN = 1257  # 1797 digits less 360 test and 180 validation


def test_tiny_benchmark_prints_sane_ratios_per_case():
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--repeats", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match[1]: [float(n) for n in match.groups()[1:]] for match in LINE.finditer(result.stdout)}
    assert set(rows) == {"digits_mlp", "digits_cnn"}, result.stdout
    for name, numbers in rows.items():
        assert all(math.isfinite(n) and n > 0 for n in numbers), name
        rates, seconds, (bare_ratio, pipeline_ratio) = numbers[0:6:2], numbers[1:6:2], numbers[6:]
        for rate, per_epoch in zip(rates, seconds):  # images/s × s/epoch is one epoch's images, for every loop
            assert rate * per_epoch == pytest.approx(DIGITS_TRAIN, rel=0.02), name
        # the ratios are printed to two decimals: a small one (a busy machine) is off by up to 0.005 from rounding
        assert bare_ratio == pytest.approx(rates[1] / rates[0], rel=0.05, abs=0.006), name
        assert pipeline_ratio == pytest.approx(rates[2] / rates[0], rel=0.05, abs=0.006), name
