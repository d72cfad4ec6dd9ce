"""The server's event loop, measured: the standard library's asyncio loop against uvloop.

Run from the repository root (uvloop installed: ``pip install -e '.[test]'``)::

    python -m bench.loop_bench [--quick] [--rounds N] [--no-pin] [--write-docs]

Two encrypted databases with the same table, one served with
``network.event_loop = "asyncio"``, the other with ``"uvloop"``; the workloads
of ``bench.tls_bench`` (sequential lookups, a bulk fetch, connects with a resumed
TLS session) run on both in interleaved rounds, servers and client pinned to one
CPU by default.  The table gives medians, spreads and the ratio uvloop/asyncio.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ._common import (
    choose_cpu,
    interleaved_args,
    pin_client,
    pin_note,
    set_setting,
    summary,
    taskset_prefix,
    write_marked,
)
from .tls_bench import Sizes, Target, bulk, connects, load_table, lookups, payload_size

LOOPS = ("asyncio", "uvloop")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DOC_START = "<!-- loop-bench:start -->"
DOC_END = "<!-- loop-bench:end -->"


FULL = Sizes(rounds=7, lookups=3000, bulk_rows=300_000, connects=50)
QUICK = Sizes(rounds=2, lookups=200, bulk_rows=10_000, connects=5)

# (sample, label, scale, format, higher is better)
METRICS = (
    ("lookup_rate", "PK lookups: round trips/s", 1.0, "{:,.0f}", True),
    ("lookup_cpu", "PK lookups: CPU µs per round trip (client + server)", 1e6, "{:,.0f}", False),
    ("bulk_rows", "bulk fetch: rows/s", 1.0, "{:,.0f}", True),
    ("bulk_cpu", "bulk fetch: CPU ns per row (client + server)", 1e9, "{:,.0f}", False),
    ("connect_rate", "connects/s (resumed TLS session)", 1.0, "{:,.1f}", True),
    ("connect_cpu", "CPU ms per connect (resumed TLS session)", 1e3, "{:,.2f}", False),
)


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    resumed: list[bool] = field(default_factory=list)
    payload_bytes: int = 0

    def add(self, loop: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.samples.setdefault((loop, k), []).append(v)

    def ratio(self, key: str) -> float:
        return (statistics.median(self.samples[("uvloop", key)])
                / statistics.median(self.samples[("asyncio", key)]))


@contextmanager
def servers(root: Path, cpu: int | None) -> Iterator[dict[str, Target]]:
    """One encrypted ``casemate serve`` per event loop; stopped at the end."""
    from casemate.database import create_database
    from casemate.testing import ADMIN_PASSWORD, ServerProcess

    started = []
    try:
        targets = {}
        for loop in LOOPS:
            db = root / loop
            create_database(db, f"bench-{loop}", ADMIN_PASSWORD)
            set_setting(db, "encrypt_client_server_connections", "true")
            set_setting(db, "event_loop", f'"{loop}"')
            s = ServerProcess(db, prefix=taskset_prefix(cpu)).start()
            started.append(s)
            targets[loop] = Target(s.url, s.pid)
        yield targets
    finally:
        for s in started:
            s.stop()


def measure(target: Target, sizes: Sizes, res: Results) -> dict[str, float]:
    gc.collect()
    out = lookups(target, sizes.lookups, sizes.bulk_rows)
    gc.collect()
    out.update(bulk(target, sizes.bulk_rows, res.payload_bytes))
    gc.collect()
    rate, cpu = connects(target, sizes.connects, False, res.resumed)
    out.update(connect_rate=rate, connect_cpu=cpu)
    return out


def run(sizes: Sizes, cpu: int | None, log: Callable[[str], None]) -> Results:
    res = Results()
    with tempfile.TemporaryDirectory(prefix="casemate-loop-bench-") as tmp:
        root = Path(tmp)
        os.environ["CASEMATE_HOME"] = str(root / "client-home")
        with servers(root, cpu) as targets:
            for t in targets.values():
                load_table(t.url, sizes.bulk_rows)
                res.payload_bytes = payload_size(t, sizes.bulk_rows)  # also a warm-up
                lookups(t, min(200, sizes.lookups), sizes.bulk_rows)
            for r in range(sizes.rounds):
                for loop in (LOOPS if r % 2 == 0 else LOOPS[::-1]):
                    t0 = time.perf_counter()
                    res.add(loop, measure(targets[loop], sizes, res))
                    log(f"round {r + 1}/{sizes.rounds} {loop}: {time.perf_counter() - t0:.1f} s")
    return res


def report(res: Results, sizes: Sizes, pinning: str, quick: bool) -> list[str]:
    lines = [
        f"- mode: {'quick' if quick else 'full'}; {sizes.rounds} rounds; per round and loop "
        f"{sizes.lookups:,} lookups, {sizes.bulk_rows:,} rows, {sizes.connects} connects; "
        "both servers encrypted",
        f"- CPU pinning: {pinning}; {os.cpu_count()} CPUs; Python {platform.python_version()}",
        f"- resumed TLS sessions: {sum(res.resumed)} of {len(res.resumed)}",
        "",
        "| metric | asyncio: median (min–max) | uvloop: median (min–max) | uvloop/asyncio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label, scale, fmt, _ in METRICS:
        a = summary(res.samples[("asyncio", key)], scale, fmt)
        u = summary(res.samples[("uvloop", key)], scale, fmt)
        lines.append(f"| {label} | {a} | {u} | {res.ratio(key):.2f}x |")
    return lines


def write_docs(lines: list[str], path: Path = DOCS) -> None:
    stamp = f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.loop_bench`:"
    write_marked(path, DOC_START, DOC_END, [stamp, "", *lines])


def main(argv: list[str] | None = None) -> int:
    p = interleaved_args("python -m bench.loop_bench", "The server on asyncio's loop against uvloop.")
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS}")
    args = p.parse_args(argv)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop is not installed: pip install 'casemate[uvloop]'", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(args.rounds, sizes.lookups, sizes.bulk_rows, sizes.connects)
    cpu = choose_cpu(args.pin)
    pin_client(cpu)
    pinning = pin_note(cpu, args.pin)
    print(f"CPU pinning: {pinning}", flush=True)
    res = run(sizes, cpu, lambda s: print(s, flush=True))
    lines = report(res, sizes, pinning, args.quick)
    print("\n".join(["", *lines, ""]))
    for key, *_ in METRICS:
        print(f"ratio {key}: {res.ratio(key):.2f}x")
    if args.write_docs:
        write_docs(lines)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
