"""Smoke test of ``make bench`` at toy sizes (no timings are asserted: ratios on a shared
machine are for the benchmark table, never for a unit test) and of the allocator setting."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_prints_one_table():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("benchmark")]
    assert len(header) == 1
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header[0] + 1:]]
    labels = [r[0] for r in rows]
    assert any(lab.startswith("overlap K=35: ours (lean) vs the authors' way") for lab in labels)
    assert any(lab.startswith("overlap K=35: lean vs decode all 2K-1, same loss") for lab in labels)
    assert any(lab.startswith("chunk K=35: ours vs pytorch/examples") for lab in labels)
    assert any(lab.startswith("loss alone, fwd+bwd") for lab in labels)
    assert any(lab.startswith("ARTBP mean K=35 (c=1/35) vs fixed chunk K=35") for lab in labels)
    assert any(lab.startswith("ARTBP mean K=35 (c=1/35) vs fixed overlap K=35") for lab in labels)
    assert any(lab.startswith("ARTBP mean K=35: fused segments vs one step at a time")
               for lab in labels)
    assert any("static buffers, no graph (CPU) vs eager" in lab for lab in labels)
    assert any(lab.startswith("K update, 3 estimates") and "together vs separate" in lab
               for lab in labels)
    assert any(lab.startswith("estimator share of train_time (%)") for lab in labels)
    assert sum(lab.startswith("peak memory, overlap step K=") for lab in labels) == 2
    assert any(lab.startswith("profile W=") for lab in labels)
    assert any("RecurDecode fast path vs (e) generic forward" in lab for lab in labels)
    ratios = [float(c[:-1]) for r in rows for c in r[1:] if re.fullmatch(r"[\d.]+x", c)]
    assert len(ratios) >= 12 and all(r > 0 for r in ratios)
    for row in rows:
        if row[0].startswith("peak memory"):  # a fresh process per K: the step's growth < peak
            grown = float(re.search(r"\+(\d+) in the step", row[0]).group(1))
            assert 0 <= grown < float(row[1])


def test_package_import_turns_on_huge_page_allocation_unless_set():
    code = "import os, atbptt; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    expected = "1" if sys.platform.startswith("linux") else "None"
    assert out.stdout.strip() == expected
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "0"
