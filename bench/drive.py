"""Runs one `embedpipe run` in this process and prints its report with the driver's peak RSS.

It runs the job as the command line does (run_job with release_ray), so a benchmark's wall time
is what `embedpipe run` takes. Without it Ray stopped at the interpreter's exit, after the
report: an int8 run of the stdlib corpus spent 6.5 s of its 73.0 s outside the report's own
seconds here, where `embedpipe run` spent 3.6 s of 63.1 s the same afternoon.

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
    # release_ray: as `embedpipe run` does, Ray stops while the report is drawn, not at exit
    report = run_job(load_config(sys.argv[1], sys.argv[2:]), release_ray=True)
    print(json.dumps({"report": report, "driver_peak_rss_mb": peak_rss_mb()}))
