"""Runs one `embedpipe run` in this process and prints its report with the driver's peak RSS.

The benchmarks start it as a fresh process per run, so the peak memory is that run's alone. The
peak is VmHWM from /proc/self/status, not getrusage's ru_maxrss: Linux carries ru_maxrss over
fork and exec, so a child of a large parent would report the parent's size.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.batch.run import run_job
from pipelines.config import load_config


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    report = run_job(load_config(sys.argv[1], sys.argv[2:]))
    print(json.dumps({"report": report, "driver_peak_rss_mb": peak_rss_mb()}))
