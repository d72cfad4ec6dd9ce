"""Two versions of the server (or of the client), side by side: is a change worth keeping?

Run from the repository root::

    python -m bench.ab --base REV [--workloads lookups,writes,mix] [--rounds N]
                       [--plain] [--quick] [--no-pin] [--side server|client]
    python -m bench.ab --base-src DIR ...   (an existing source tree instead of a revision)

``head`` is this tree's ``src``; ``base`` is revision REV checked out in a temporary
``git worktree`` with its extensions built there (``setup.py build_ext --inplace``), or
the ``src`` of DIR.  One real ``casemate serve`` runs on each (``PYTHONPATH`` picks the
code; the log line "row path: ..., protocol core: ..." of each is printed), both on the
same kind of database (encrypted unless ``--plain``) with the same table, and in each
round every workload runs on both, in alternating order (head first in even rounds),
so the machine's drift falls on both alike.  The client is this tree's code for both:
only the server differs.

With ``--side client`` it is the other way round: one server (this tree's) and two
clients, head's and base's code, each round's workload run by a child process whose
``PYTHONPATH`` picks the client's code (pinned to the same CPU; not ``mix``).  That is
how a change to the client is judged: in the benchmarks the client shares the server's
CPU, so its CPU per request is the other half of a lookup.

Workloads: ``lookups`` (sequential primary-key lookups on one connection), ``writes``
(sequential autocommit single-row updates), ``mix`` (``--clients`` threads, one
connection each, 80 % lookups and 20 % updates, as ``bench.suite``'s concurrent mix),
``connects`` (connect, log in, ``SELECT 1``, close, one after another, an encrypted one
resuming the previous TLS session, as ``bench.suite``'s resumed connects; a thirtieth of
``--ops`` of them, at least 20).  ``connects`` is not in the default list.
Reported per workload: the median and range over rounds of the server's CPU per
operation (``/proc``), of the client's and of the rate, and the median of the paired
differences head - base of each figure, the one to judge a change by on a noisy machine
(the medians move with the machine; the paired differences much less).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._common import (
    Meter,
    choose_cpu,
    interleaved_args,
    pin_client,
    pin_note,
    taskset_prefix,
)

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("lookups", "writes", "mix", "connects")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    rows: int
    ops: int            # lookups or writes per round
    mix_seconds: float


FULL = Sizes(rounds=8, rows=100_000, ops=3000, mix_seconds=2.0)
QUICK = Sizes(rounds=2, rows=2000, ops=300, mix_seconds=0.3)


@contextmanager
def base_tree(rev: str | None, src: Path | None) -> Iterator[Path]:
    """The ``src`` directory of the base version: DIR's, or REV's in a temporary worktree
    with its extensions built (removed afterwards)."""
    if src is not None:
        yield src
        return
    assert rev is not None
    tmp = Path(tempfile.mkdtemp(prefix="casemate-ab-"))
    tree = tmp / "tree"
    r = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"cannot check out {rev!r}: {r.stderr.strip()}")
    try:
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tree, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"base {rev}: extensions not built (its pure-Python code will run):\n"
                  f"{r.stderr[-2000:]}", flush=True)
        yield tree / "src"
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def serve(stack: ExitStack, root: Path, name: str, src: Path, encrypted: bool,
          cpu: int | None) -> Any:
    from casemate.testing import ServerProcess

    from .suite import create_db

    env = {"PYTHONPATH": str(src)}
    server = ServerProcess(create_db(root, name, encrypted), prefix=taskset_prefix(cpu),
                           env=env)
    server.start()
    stack.callback(server.stop)
    found = [line.strip() for line in server.output if "row path:" in line]
    print(f"  {name}: {src}: {found[0].split('INFO casemate.server: ')[-1] if found else '?'}",
          flush=True)
    return server


def sequential(s: Any, sql: str, ops: int, rows: int, seed: int, read: bool
               ) -> dict[str, float]:
    conn = s.connect()
    conn.autocommit = True
    keys = random.Random(seed).choices(range(1, rows + 1), k=ops)
    try:
        cur = conn.cursor()
        with Meter(s.server_cpu) as m:
            for k in keys:
                cur.execute(sql, (k,))
                if read and cur.fetchone() is None:
                    raise RuntimeError(f"{s.name}: row {k} missing")
    finally:
        conn.close()
    return {"rate": ops / m.wall, "server": m.server / ops, "client": m.client / ops}


def client_round(src: Path, server: Any, workload: str, ops: int, rows: int, seed: int,
                 cpu: int | None) -> dict[str, float]:
    """One round of ``workload`` run by a child process on the client code in ``src``."""
    import json

    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    cmd = [*taskset_prefix(cpu), sys.executable, "-m", "bench.ab", "--client-run",
           json.dumps([server.url, server.pid, workload, ops, rows, seed])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"the {workload} client on {src} failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if Path(out.pop("client_src")).resolve() != (src / "casemate").resolve():
        raise SystemExit(f"the client child did not run the code in {src}")
    return dict(out)


def client_run(spec: str) -> None:
    """The child of :func:`client_round`: run the workload, print its figures as JSON."""
    import json

    from ._common import process_cpu
    from .suite import System

    url, pid, workload, ops, rows, seed = json.loads(spec)
    import casemate

    s = System(workload, lambda: casemate.connect(url, program="bench"),
               lambda: process_cpu(pid), "?", url)
    if workload == "connects":
        out = connects(s, ops)
    else:
        out = sequential(s, READ if workload == "lookups" else WRITE, ops, rows, seed,
                         workload == "lookups")
    print(json.dumps({**out, "client_src": str(Path(casemate.__file__).parent)}))


READ = "SELECT name, qty, price FROM t WHERE id = ?"
WRITE = "UPDATE t SET qty = qty + 1 WHERE id = ?"


def connects(s: Any, ops: int) -> dict[str, float]:
    from .suite import connect_once

    n = max(ops // 30, 20)
    connect_once(s, False)  # a TLS session to resume
    with Meter(s.server_cpu) as m:
        for _ in range(n):
            connect_once(s, False)
    return {"rate": n / m.wall, "server": m.server / n, "client": m.client / n}


def _restore_home(old: str | None) -> None:
    if old is None:
        os.environ.pop("CASEMATE_HOME", None)
    else:
        os.environ["CASEMATE_HOME"] = old


def run(args: argparse.Namespace, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    from .suite import casemate_system, load_data, mix

    cpu = choose_cpu(args.pin)
    pin_client(cpu)
    clients = args.side == "client"
    log(f"CPU pinning: {pin_note(cpu, args.pin)}; " + (
        "the server is this tree's code, the clients head's and base's" if clients else
        "the client is this tree's code"))
    wanted = [w for w in args.workloads.split(",") if w]
    unknown = set(wanted) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(WORKLOADS)}")
    if clients and "mix" in wanted:
        raise SystemExit("--side client runs no mix (one client process per round): "
                         "give --workloads")
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        w: {"head": [], "base": []} for w in wanted}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="casemate-ab-db-")))
        # The throw-away servers' keys go to a throw-away CASEMATE_HOME: pinned in the
        # user's own, a later run's server on a reused port was refused as another key.
        old_home = os.environ.get("CASEMATE_HOME")
        os.environ["CASEMATE_HOME"] = str(tmp / "client-home")
        stack.callback(_restore_home, old_home)
        base_src = stack.enter_context(base_tree(args.base, args.base_src))
        srcs = {"head": ROOT / "src", "base": base_src}
        if clients:  # one server, this tree's; the two clients run in child processes
            one = serve(stack, tmp, "server", ROOT / "src", not args.plain, cpu)
            servers = {"head": one, "base": one}
        else:
            servers = {k: serve(stack, tmp, k, src, not args.plain, cpu)
                       for k, src in srcs.items()}
        systems = {k: casemate_system(k, v) for k, v in servers.items()}
        conns: dict[str, list[Any]] = {}
        for k, s in systems.items():
            if clients and k == "base":
                break  # the same server: loaded once
            load_data(s, sizes.rows)
            if "mix" in wanted:
                conns[k] = []
                for _ in range(args.clients):
                    c = s.connect()
                    c.autocommit = True
                    conns[k].append(c)
                    stack.callback(c.close)
        for r in range(sizes.rounds):
            order = ("head", "base") if r % 2 == 0 else ("base", "head")
            for w in wanted:
                for k in order:
                    s = systems[k]
                    if w == "mix":
                        out = mix(s, conns[k], sizes.mix_seconds, sizes.rows, [])
                        n = args.clients
                        results[w][k].append({"rate": out[f"mix{n}_rate"],
                                              "cpu": out[f"mix{n}_cpu"],
                                              "p99": out[f"mix{n}_p99"]})
                    elif w == "connects" and not clients:
                        results[w][k].append(connects(s, sizes.ops))
                    elif clients:
                        results[w][k].append(client_round(srcs[k], servers[k], w, sizes.ops,
                                                          sizes.rows, r, cpu))
                    else:
                        results[w][k].append(sequential(
                            s, READ if w == "lookups" else WRITE, sizes.ops, sizes.rows,
                            r, w == "lookups"))
            log(f"round {r + 1}/{sizes.rounds} done")
    return results


def report(results: dict[str, Any]) -> list[str]:
    lines = ["| workload | figure | head | base | head / base | paired head - base |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for w, per in results.items():
        figures = [("rate", "operations/s", 1.0, "{:,.0f}")]
        if w == "mix":
            figures += [("cpu", "CPU µs per operation (client + server)", 1e6, "{:.1f}"),
                        ("p99", "p99 latency (ms)", 1e3, "{:.1f}")]
        else:
            figures += [("server", "server CPU µs per operation", 1e6, "{:.1f}"),
                        ("client", "client CPU µs per operation", 1e6, "{:.1f}")]
        for key, label, scale, fmt in figures:
            h = [x[key] * scale for x in per["head"]]
            b = [x[key] * scale for x in per["base"]]
            paired = statistics.median(x - y for x, y in zip(h, b, strict=True))
            hm, bm = statistics.median(h), statistics.median(b)
            # (CPU is read in 10 ms ticks: a short round may read none; no ratio then)
            ratio = f"{hm / bm:.3f}x" if bm else "–"
            lines.append(f"| {w} | {label} | {fmt.format(hm)} "
                         f"({fmt.format(min(h))}-{fmt.format(max(h))}) | "
                         f"{fmt.format(bm)} ({fmt.format(min(b))}-"
                         f"{fmt.format(max(b))}) | {ratio} | {paired:+.2f} |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = interleaved_args("python -m bench.ab", (
        "Two versions of the Casemate server (or, with --side client, of the client) side "
        "by side, interleaved and pinned: this tree (head) against a git revision or "
        "another source tree (base)."))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--base", metavar="REV", help="git revision of the base version "
                       "(checked out in a temporary worktree, extensions built there)")
    which.add_argument("--base-src", metavar="DIR", type=Path,
                       help="the base version's source directory (the one holding casemate/)")
    p.add_argument("--workloads", default="lookups,writes,mix",
                   help=f"comma-separated, from {', '.join(WORKLOADS)} (default: "
                   "lookups,writes,mix)")
    p.add_argument("--clients", type=int, default=128, help="threads of the mix (default 128)")
    p.add_argument("--plain", action="store_true", help="plain TCP (default: encrypted)")
    p.add_argument("--side", choices=("server", "client"), default="server",
                   help="which side's code differs: server (default: two servers, this "
                   "tree's client) or client (one server, this tree's; two clients, each "
                   "round in a child process)")
    p.add_argument("--client-run", help=argparse.SUPPRESS)
    p.add_argument("--ops", type=int, help=f"lookups or writes per round (default "
                   f"{FULL.ops}; CPU is read in 10 ms ticks: more ops, finer figures)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--client-run"]:
        client_run(sys.argv[2])  # a child of --side client (no --base needed)
        return 0
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    if args.ops is not None:
        if args.ops < 1:
            raise SystemExit("--ops must be at least 1")
        sizes = replace(sizes, ops=args.ops)
    if args.clients < 1:
        raise SystemExit("--clients must be at least 1")
    if args.base_src is not None and not (args.base_src / "casemate").is_dir():
        raise SystemExit(f"{args.base_src}: no casemate package there (give the src directory)")
    started = time.time()
    print(f"bench.ab: {args.side} side; head = {ROOT / 'src'}, base = "
          f"{args.base or args.base_src}; {'plain' if args.plain else 'encrypted'}; "
          f"{sizes.rounds} rounds", flush=True)
    results = run(args, sizes, lambda s: print(f"  {s}", flush=True))
    print("\n".join(["", *report(results)]))
    print(f"done in {time.time() - started:.0f} s (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
