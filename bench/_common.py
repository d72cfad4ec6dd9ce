"""Helpers shared by the benchmarks: CPU time from /proc, CPU pinning, settings, formatting."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

CPU_CLOCK = os.sysconf("SC_CLK_TCK")


def proc_times(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its reaped children) of process ``pid``.

    /proc/PID/stat: after the ")" closing the command name, utime, stime, cutime and
    cstime are the 12th to 15th fields, in clock ticks; utime/stime cover all threads.
    Raises OSError when the process is gone.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return ((int(fields[11]) + int(fields[12])) / CPU_CLOCK,
            (int(fields[13]) + int(fields[14])) / CPU_CLOCK)


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by one process (all its threads)."""
    return proc_times(pid)[0]


def tree_cpu(parent: int, children: list[int]) -> float:
    """CPU seconds of ``parent``, its living ``children`` and the children it has reaped.

    For a server that forks a process per connection (PostgreSQL): a backend that
    exits moves its CPU time into the parent's cutime/cstime, so the total stays
    monotonic.  Children are read before the parent, so one that exits in between
    is still counted (in the parent's reaped time).
    """
    total = 0.0
    for pid in children:
        try:
            total += proc_times(pid)[0]
        except OSError:
            pass
    own, reaped = proc_times(parent)
    return total + own + reaped


class Meter:
    """Wall-clock seconds and CPU seconds (this process, the server) of a ``with`` block.

    ``server_cpu`` returns the server's CPU seconds so far; ``client``/``server`` are
    the CPU seconds each side spent in the block, ``cpu`` their sum.
    """

    def __init__(self, server_cpu: Callable[[], float]) -> None:
        self._server_cpu = server_cpu
        self.wall = self.client = self.server = 0.0

    @property
    def cpu(self) -> float:
        return self.client + self.server

    def __enter__(self) -> Meter:
        self._s0 = self._server_cpu()
        self._c0 = time.process_time()
        self._w0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w0
        self.client = time.process_time() - self._c0
        self.server = self._server_cpu() - self._s0


# -- pinning -------------------------------------------------------------------------------

def choose_cpu(pin: bool) -> int | None:
    """The CPU to pin the servers and the client to, or None (not asked, or no taskset)."""
    if not pin or shutil.which("taskset") is None:
        return None
    return min(os.sched_getaffinity(0))


def pin_client(cpu: int | None) -> None:
    """Pin this process to ``cpu`` (where the servers run), if any."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def pin_note(cpu: int | None, asked: bool) -> str:
    if cpu is not None:
        return f"servers and client pinned to CPU {cpu}"
    return "none (taskset not found)" if asked else "none (--no-pin)"


def taskset_prefix(cpu: int | None) -> tuple[str, ...]:
    """Command prefix that pins a server (``taskset`` execs: the pid stays the same)."""
    return ("taskset", "-c", str(cpu)) if cpu is not None else ()


# -- setup ---------------------------------------------------------------------------------

def write_marked(path: Path, start_marker: str, end_marker: str, lines: list[str],
                 append: bool = False) -> None:
    """Replace the text between two marker lines of ``path`` with ``lines`` (markers kept).

    Without the markers: with ``append``, add the block at the end of the file (created
    if missing); otherwise refuse with SystemExit, touching nothing.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = "\n".join([start_marker, *lines, end_marker])
    start, end = text.find(start_marker), text.find(end_marker)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(end_marker):]
    elif append:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        raise SystemExit(f"{path}: markers {start_marker} / {end_marker} not found")
    path.write_text(text, encoding="utf-8")


def set_setting(db: Path, key: str, value: str) -> None:
    """Rewrite ``key = ...`` in casemate.toml (``value`` is TOML text)."""
    toml = db / "casemate.toml"
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", toml.read_text())
    if n != 1:
        raise RuntimeError(f"{toml}: no single line for {key}")
    toml.write_text(text)


# -- reporting -----------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"(?m)^model name\s*:\s*(.+)$", text)
    return m.group(1).strip() if m else "unknown"


def summary(values: list[float], scale: float, fmt: str) -> str:
    """``median (min–max)`` in the metric's unit; just the value for a single sample."""
    med, lo, hi = (scale * v for v in (statistics.median(values), min(values), max(values)))
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def interleaved_args(prog: str, description: str) -> argparse.ArgumentParser:
    """The options of the interleaved, pinned benchmarks: --quick, --rounds, --no-pin."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests)")
    p.add_argument("--rounds", type=int, help="rounds of interleaved measurements")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the servers and the client to one CPU")
    return p
