"""The MCP benchmark's client side: the official MCP Python SDK (PyPI `mcp`) in its default mode.

Usage: sdk_client.py TARGET TOOL CALLS CONCURRENCY [WATCH]

TARGET is `stdio:["cmd", "arg", ...]` (the SDK launches the server, as a desktop client does) or
`http://...` with the bearer credential in `WARDEN_BENCH_BEARER` (if any). WATCH says whose CPU
and context switches to count: `child:NAME` (the SDK's child process whose command is NAME, for
stdio) or a PID (for HTTP). Calls `TOOL` with `{"message": ...}` CALLS times one after another
(after a warm-up), then CALLS times with CONCURRENCY in flight, and prints one JSON object:
latencies (ms), throughput (calls/s), and the watched process's CPU (ms) and voluntary and
involuntary context switches per call in each phase. The mode is `WARDEN_E2E_MODE` (`auto`, the
SDK's default, unless set).
"""

import asyncio
import json
import os
import sys
import time

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def children(pid):
    """PIDs whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def find_watched(watch):
    if watch is None:
        return None
    if watch.startswith("child:"):
        name = watch[len("child:") :]
        for pid in children(os.getpid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0].decode()
            except OSError:
                continue
            if os.path.basename(argv0) == name:
                return pid
        raise SystemExit(f"no child process named {name}")
    return int(watch)


def usage(pid):
    """(CPU ms, voluntary switches, involuntary switches, {thread name: voluntary switches})
    of every thread of `pid` so far."""
    if pid is None:
        return (0.0, 0, 0, {})
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) * TICK_MS
    vol = invol = 0
    by_name = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Name:"):
                        name = line.split(None, 1)[1].strip()
                    elif line.startswith("voluntary_ctxt_switches:"):
                        n = int(line.split()[1])
                        vol += n
                        by_name[name] = by_name.get(name, 0) + n
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass  # a thread that ended: its switches are gone from the count
    return (cpu, vol, invol, by_name)


def per_call(before, after, n):
    threads = {
        name: round((count - before[3].get(name, 0)) / n, 2)
        for name, count in after[3].items()
        if count - before[3].get(name, 0) > 0
    }
    return {
        "cpu_ms": (after[0] - before[0]) / n,
        "voluntary": (after[1] - before[1]) / n,
        "involuntary": (after[2] - before[2]) / n,
        "voluntary_by_thread": threads,
    }


async def run(client, tool, calls, concurrency, watch):
    session = client.session

    async def call(i):
        r = await session.call_tool(tool, {"message": f"m{i}"})
        if r.is_error:
            raise SystemExit(f"call failed: {r}")

    for i in range(100):
        await call(10_000_000 + i)  # warm-up
    pid = find_watched(watch)
    out = {"protocol": str(client.protocol_version)}

    before = usage(pid)
    latencies = []
    start = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - t) * 1000.0)
    elapsed = time.perf_counter() - start
    after = usage(pid)
    latencies.sort()
    out["sequential"] = {
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "calls_per_s": calls / elapsed,
        **per_call(before, after, calls),
    }

    before = usage(pid)
    queue = iter(range(20_000_000, 20_000_000 + calls))

    async def worker():
        for i in queue:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = usage(pid)
    out["concurrent"] = {
        "calls_per_s": calls / elapsed,
        **per_call(before, after, calls),
    }
    print(json.dumps(out), flush=True)


async def main():
    target, tool, calls, concurrency, *rest = sys.argv[1:]
    calls, concurrency = int(calls), int(concurrency)
    watch = rest[0] if rest else None
    mode = os.environ.get("WARDEN_E2E_MODE", "auto")
    if target.startswith("stdio:"):
        command = json.loads(target[len("stdio:") :])
        params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
        async with Client(stdio_client(params), mode=mode) as client:
            await run(client, tool, calls, concurrency, watch)
        return
    bearer = os.environ.get("WARDEN_BENCH_BEARER")
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(target, http_client=http), mode=mode) as client:
            await run(client, tool, calls, concurrency, watch)


if __name__ == "__main__":
    asyncio.run(main())
