"""Drives Warden's MCP endpoint with the official MCP Python SDK client (PyPI `mcp`).

Usage: client.py URL CREDENTIAL_FILE SCENARIO [ARG...]
Prints one JSON document on stdout describing what the server answered; the Rust test
(`tests/mcp/mod.rs`) asserts on it.

The client is the SDK's `Client` in the mode `WARDEN_E2E_MODE` names: `auto` (the SDK's
default: `server/discover`, revision 2026-07-28, falling back to `initialize`) unless set, or
`legacy` (the `initialize` handshake).
"""

import asyncio
import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def result_json(r):
    return json.loads(r.model_dump_json(by_alias=True, exclude_none=True))


async def main():
    url, cred_file, scenario, *args = sys.argv[1:]
    mode = os.environ.get("WARDEN_E2E_MODE", "auto")
    if url.startswith("stdio:"):
        # `stdio:["warden", "stdio", ...]`: launch the server as a desktop client would.
        command = json.loads(url[len("stdio:"):])
        params = StdioServerParameters(command=command[0], args=command[1:])
        async with Client(stdio_client(params), mode=mode) as client:
            await run(client, scenario, args)
        return
    token = open(cred_file).read().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        # Results of several MiB arrive as one SSE event: lift the client's 1 MiB default.
        transport = streamable_http_client(url, http_client=http, max_sse_event_size=None)
        async with Client(transport, mode=mode) as client:
            await run(client, scenario, args)


async def run(client, scenario, args):
    out = {}
    session = client.session
    info = client.server_info
    out["server"] = info.name if info is not None else None
    out["protocol"] = str(client.protocol_version)
    if scenario == "list":
        tools = await session.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
    elif scenario == "call":
        name, arguments = args[0], json.loads(args[1])
        out["result"] = result_json(await session.call_tool(name, arguments))
    elif scenario == "concurrent":
        # `{i}` in the arguments becomes the call's number: identical calls in a
        # row would (rightly) trip loop detection.
        name, template, n = args[0], args[1], int(args[2])
        results = await asyncio.gather(
            *(
                session.call_tool(name, json.loads(template.replace("{i}", str(i))))
                for i in range(n)
            )
        )
        out["results"] = [result_json(r) for r in results]
    elif scenario == "progress":
        name, arguments = args[0], json.loads(args[1])
        seen = []

        async def on_progress(progress, total, message):
            seen.append([progress, total, message])

        r = await session.call_tool(name, arguments, progress_callback=on_progress)
        out["result"] = result_json(r)
        out["progress"] = seen
    elif scenario == "call-meta":
        # A call with `_meta` (Warden's `warden/approval` and `warden/wait`), recording
        # any progress notifications.
        name, arguments, meta = args[0], json.loads(args[1]), json.loads(args[2])
        seen = []

        async def on_progress(progress, total, message):
            seen.append([progress, total, message])

        r = await session.call_tool(
            name, arguments, progress_callback=on_progress, meta=meta
        )
        out["result"] = result_json(r)
        out["progress"] = seen
    elif scenario == "steps":
        # Several calls in one MCP session, paced by the test: step i is the file
        # DIR/step-i.json ([name, arguments, meta], or null to stop), its answer
        # DIR/result-i.json.
        directory, i = args[0], 0
        while True:
            with anyio.fail_after(120):
                while not os.path.exists(f"{directory}/step-{i}.json"):
                    await anyio.sleep(0.05)
            step = json.load(open(f"{directory}/step-{i}.json"))
            if step is None:
                break
            name, arguments, meta = step
            seen = []

            async def on_progress(progress, total, message):
                seen.append([progress, total, message])

            r = await session.call_tool(
                name, arguments, progress_callback=on_progress, meta=meta
            )
            answer = {"result": result_json(r), "progress": seen}
            with open(f"{directory}/result-{i}.tmp", "w") as f:
                json.dump(answer, f)
            os.rename(f"{directory}/result-{i}.tmp", f"{directory}/result-{i}.json")
            i += 1
        out["steps"] = i
    elif scenario == "cancel":
        # Cancel the call once it has reported progress; the SDK tells the server.
        name, arguments = args[0], json.loads(args[1])
        first = anyio.Event()

        async def on_progress(progress, total, message):
            first.set()

        async def run_call():
            await session.call_tool(name, arguments, progress_callback=on_progress)
            out["completed"] = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_call)
            with anyio.fail_after(30):
                await first.wait()
            tg.cancel_scope.cancel()
        out["cancelled"] = not out.get("completed", False)
        await anyio.sleep(1)  # let the cancellation reach the server before closing
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out))


asyncio.run(main())
