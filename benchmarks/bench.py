"""sdcli benchmarks: whole processes, alternated, measured side by side in one run -> BENCHMARKS.md.

    python benchmarks/bench.py                      # all sections, full-size SD 1.5 (random weights)
    python benchmarks/bench.py --only startup,overhead,memory --runs 3
    python benchmarks/bench.py --smoke --output /tmp/b.md   # tiny model, 64 px, 2 steps, 1 run each (CI)

Method: every measurement is a whole process (what a user or a cron job pays), started with
``subprocess.Popen`` and reaped with ``os.wait4`` (wall time by ``time.perf_counter`` around it, peak RSS of
the child from ``ru_maxrss``). The commands of a section run alternated (A B C A B C ...), so load from
other processes on the machine hits all of them alike, and ratios are taken between medians of the same
run. All children get one identical environment, with OMP_NUM_THREADS unset (torch uses every core).

Sections: startup, overhead, memory, batch, options (see ``--help``). Writes the markdown report
(default BENCHMARKS.md at the repo root) and the raw numbers as JSON (default benchmarks/results.json;
with --output, beside the report). Exits 1 when a command exited with an unexpected code.

The entry point only: the harness, the sections and the report live in ``benchlib/`` (see benchmarks/README.md).
"""

import sys

from benchlib.main import main

if __name__ == "__main__":
    sys.exit(main())
