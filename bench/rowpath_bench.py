"""The compiled row path against the pure-Python one, on encrypted connections, measured.

Run from the repository root::

    python -m bench.rowpath_bench [--quick] [--rounds N] [--no-pin]

Two encrypted databases with the same table; one ``casemate serve`` as installed
(the compiled row path, ``storage/_sqlite_rows.pyx``), one started with
``CASEMATE_PURE=1`` (``sqlite3`` + msgpack, the reference).  Each round runs, on
both servers and in alternating order, a bulk fetch of the whole table (rows/s,
CPU per row) and sequential primary-key lookups (round trips/s, CPU per lookup);
medians, spread and compiled/pure ratios.  Servers and client pinned to one CPU.
The numbers go into docs/benchmarks.md by hand (section "The compiled row path").
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._common import (
    choose_cpu,
    interleaved_args,
    pin_client,
    pin_note,
    set_setting,
    summary,
    taskset_prefix,
)
from .tls_bench import Target, bulk, load_table, lookups, payload_size

BUILDS = ("compiled", "pure")
QUICK = {"rounds": 2, "rows": 20_000, "lookups": 200}
FULL = {"rounds": 5, "rows": 1_000_000, "lookups": 3_000}


@contextmanager
def servers(root: Path, cpu: int | None) -> Iterator[dict[str, Target]]:
    """One encrypted server per build; stopped at the end."""
    from casemate.database import create_database
    from casemate.storage import sqlite_rows
    from casemate.testing import ADMIN_PASSWORD, ServerProcess

    if not sqlite_rows.COMPILED:
        raise SystemExit(f"the compiled row path is not available here: {sqlite_rows.WHY_PURE}")
    running = []
    try:
        for build in BUILDS:
            db = root / build
            create_database(db, f"rowpath-{build}", ADMIN_PASSWORD)
            set_setting(db, "encrypt_client_server_connections", "true")
            env = {"CASEMATE_PURE": "1"} if build == "pure" else {"CASEMATE_PURE": ""}
            running.append(ServerProcess(db, prefix=taskset_prefix(cpu), env=env).start())
            said = [line.split("row path: ", 1)[1] for line in
                    (db / "Logs" / "server.log").read_text().splitlines() if "row path: " in line]
            print(f"{build} server: row path: {said[-1] if said else '?'}", flush=True)
        yield {b: Target(s.url, s.pid) for b, s in zip(BUILDS, running, strict=True)}
    finally:
        for s in running:
            s.stop()


def run(sizes: dict[str, int], cpu: int | None) -> dict[tuple[str, str], list[float]]:
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="casemate-rowpath-") as tmp:
        root = Path(tmp)
        os.environ["CASEMATE_HOME"] = str(root / "client-home")
        with servers(root, cpu) as targets:
            payload = 0
            for t in targets.values():
                load_table(t.url, sizes["rows"])
                payload = payload_size(t, sizes["rows"])  # also a warm-up pass
            for r in range(sizes["rounds"]):
                for build in (BUILDS if r % 2 == 0 else BUILDS[::-1]):
                    t0 = time.perf_counter()
                    gc.collect()
                    got = bulk(targets[build], sizes["rows"], payload)
                    gc.collect()
                    got.update(lookups(targets[build], sizes["lookups"], sizes["rows"]))
                    for k, v in got.items():
                        samples.setdefault((build, k), []).append(v)
                    print(f"round {r + 1}/{sizes['rounds']} {build}: "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return samples


METRICS = [("bulk fetch", "rows/s", "bulk_rows", 1.0, "{:,.0f}"),
           ("bulk fetch", "CPU ns per row (client + server)", "bulk_cpu", 1e9, "{:,.0f}"),
           ("PK lookups", "round trips/s", "lookup_rate", 1.0, "{:,.0f}"),
           ("PK lookups", "CPU µs per lookup (client + server)", "lookup_cpu", 1e6, "{:,.1f}")]


def report(samples: dict[tuple[str, str], list[float]]) -> list[str]:
    lines = ["| workload (encrypted) | metric | compiled | pure Python | compiled / pure |",
             "| --- | --- | ---: | ---: | ---: |"]
    for workload, metric, key, scale, fmt in METRICS:
        c, p = samples[("compiled", key)], samples[("pure", key)]
        ratio = statistics.median(c) / statistics.median(p)
        lines.append(f"| {workload} | {metric} | {summary(c, scale, fmt)} | "
                     f"{summary(p, scale, fmt)} | {ratio:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = interleaved_args("python -m bench.rowpath_bench",
                            "Compiled versus pure-Python row path (encrypted).").parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.rounds:
        sizes["rounds"] = args.rounds
    cpu = choose_cpu(args.pin)
    pin_client(cpu)
    print(f"CPU pinning: {pin_note(cpu, args.pin)}", flush=True)
    samples = run(sizes, cpu)
    print("\n".join(["", f"{sizes['rows']:,} rows, {sizes['lookups']:,} lookups, "
                     f"{sizes['rounds']} rounds; medians (min-max)", "", *report(samples)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
