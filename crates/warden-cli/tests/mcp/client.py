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
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def result_json(r):
    return json.loads(r.model_dump_json(by_alias=True, exclude_none=True))


# What the server asked of this client (scenario `ask`): each request's method and params.
ASKED = []


async def on_sampling(context, params):
    import mcp_types as types

    ASKED.append({"sampling": json.loads(params.model_dump_json(by_alias=True, exclude_none=True))})
    said = params.messages[0].content.text
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"the model read: {said}"),
        model="e2e-model",
    )


async def on_elicitation(context, params):
    import mcp_types as types

    ASKED.append({"elicitation": json.loads(params.model_dump_json(by_alias=True, exclude_none=True))})
    return types.ElicitResult(action="decline")


async def on_roots(context):
    import mcp_types as types

    ASKED.append({"roots": True})
    return types.ListRootsResult(roots=[types.Root(uri="file:///e2e/project", name="e2e project")])


# The URIs `notifications/resources/updated` named (scenario `subscribe`).
UPDATED = []
GOT_UPDATE = None


# Whether `notifications/resources/list_changed` came unsolicited (scenario `relist`).
LIST_CHANGED = None


async def on_message(message):
    import mcp_types as types

    if isinstance(message, types.ResourceListChangedNotification):
        if LIST_CHANGED is not None:
            LIST_CHANGED.set()
    if isinstance(message, types.ResourceUpdatedNotification):
        UPDATED.append(message.params.uri)
        if GOT_UPDATE is not None:
            GOT_UPDATE.set()


# Set when a log message arrives (scenario `ask`).
GOT_LOG = None


async def on_log(params):
    ASKED.append({"log": params.data})
    if GOT_LOG is not None:
        GOT_LOG.set()


async def main():
    url, cred_file, scenario, *args = sys.argv[1:]
    mode = os.environ.get("WARDEN_E2E_MODE", "auto")
    # Scenario `ask` declares sampling, elicitation and roots (answered by the callbacks above).
    extra = {}
    if scenario == "ask":
        extra = {
            "sampling_callback": on_sampling,
            "elicitation_callback": on_elicitation,
            "list_roots_callback": on_roots,
            "logging_callback": on_log,
            # On 2026-07-28 a request opts in to log messages (ignored on earlier revisions).
            "log_level": "debug",
        }
    if scenario in ("subscribe", "subscribe-hold", "relist"):
        extra = {"message_handler": on_message}
    if url.startswith("stdio:"):
        # `stdio:["warden", "stdio", ...]`: launch the server as a desktop client would.
        command = json.loads(url[len("stdio:"):])
        # The SDK gives a server it launches only a default environment; the secret the test's
        # `everything` upstream needs is passed on when the test sets it.
        env = None
        if "WARDEN_E2E_DEMO_KEY" in os.environ:
            env = {**get_default_environment(), "WARDEN_E2E_DEMO_KEY": os.environ["WARDEN_E2E_DEMO_KEY"]}
        params = StdioServerParameters(command=command[0], args=command[1:], env=env)
        async with Client(stdio_client(params), mode=mode, **extra) as client:
            await run(client, scenario, args)
        return
    token = open(cred_file).read().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        # Results of several MiB arrive as one SSE event: lift the client's 1 MiB default.
        transport = streamable_http_client(url, http_client=http, max_sse_event_size=None)
        async with Client(transport, mode=mode, **extra) as client:
            await run(client, scenario, args)


async def run(client, scenario, args):
    global ANSWERED
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
    elif scenario == "ask":
        # Calls (each `[name, arguments]` in the JSON list given) during which the server may ask
        # this client for sampling, elicitation or roots; reports what was asked.
        # The high-level `Client.call_tool` answers a 2026-07-28 server's input-required
        # results through the same callbacks and retries.
        # `ask CALLS await-log`: then waits (3 s at most) for a log message, which may come
        # after the call's result (an upstream's notifications are handled apart from its
        # responses).
        global GOT_LOG
        GOT_LOG = anyio.Event()
        out["results"] = []
        for name, arguments in json.loads(args[0]):
            out["results"].append(result_json(await client.call_tool(name, arguments)))
        if args[1:] == ["await-log"]:
            with anyio.move_on_after(3):
                await GOT_LOG.wait()
        out["asked"] = ASKED
    elif scenario == "subscribe":
        # subscribe URI: subscribes (`resources/subscribe` on an earlier revision,
        # `subscriptions/listen` on 2026-07-28), turns server-everything's simulated updates on
        # (its toggle may find them on already: then once more) and waits for one.
        global GOT_UPDATE
        GOT_UPDATE = anyio.Event()
        uri = args[0]
        toggle = "everything.toggle-subscriber-updates"
        if str(client.protocol_version) < "2026-07-28":
            try:
                await session.subscribe_resource(uri)
            except Exception as e:
                out["error"] = str(e)
                print(json.dumps(out), flush=True)
                ANSWERED = True
                return
            for _ in range(2):
                await session.call_tool(toggle, {})
                with anyio.move_on_after(7):
                    await GOT_UPDATE.wait()
                if UPDATED:
                    break
        else:
            async with client.listen(resource_subscriptions=[uri]) as sub:
                out["honored"] = list(sub.honored.resource_subscriptions or []) if sub.honored else []
                for _ in range(2):
                    if not out["honored"]:
                        break
                    await session.call_tool(toggle, {})
                    with anyio.move_on_after(7):
                        async for event in sub:
                            UPDATED.append(getattr(event, "uri", repr(event)))
                            break
                    if UPDATED:
                        break
        out["updated"] = UPDATED
    elif scenario == "subscribe-hold":
        # subscribe-hold URI SECONDS: subscribes (`resources/subscribe`, an earlier revision),
        # says `subscribed` on stderr, and waits (SECONDS at most) for an update that something
        # else turns on.
        GOT_UPDATE = anyio.Event()
        await session.subscribe_resource(args[0])
        print("subscribed", file=sys.stderr, flush=True)
        with anyio.move_on_after(float(args[1])):
            await GOT_UPDATE.wait()
        out["updated"] = UPDATED
    elif scenario == "relist":
        # relist NAME: calls server-everything's gzip tool, which adds resource NAME to its list
        # and says so; waits (10 s at most) for Warden to pass that on — unsolicited on an
        # earlier revision, on a `subscriptions/listen` stream on 2026-07-28 — then lists again.
        global LIST_CHANGED
        LIST_CHANGED = anyio.Event()
        gzip = ("everything.gzip-file-as-resource", {"name": args[0], "data": "data:text/plain;base64,aGVsbG8=", "outputType": "resourceLink"})
        if str(client.protocol_version) < "2026-07-28":
            out["result"] = result_json(await session.call_tool(*gzip))
            with anyio.move_on_after(10):
                await LIST_CHANGED.wait()
            out["changed"] = LIST_CHANGED.is_set()
        else:
            out["changed"] = False
            async with client.listen(resources_list_changed=True) as sub:
                out["honored"] = bool(sub.honored and sub.honored.resources_list_changed)
                out["result"] = result_json(await session.call_tool(*gzip))
                with anyio.move_on_after(10):
                    async for event in sub:
                        out["changed"] = type(event).__name__
                        break
        resources = await session.list_resources()
        out["resources"] = sorted(r.uri for r in resources.resources)
    elif scenario == "hold-listen":
        # hold-listen SECONDS: opens a `subscriptions/listen` for tool list changes (2026-07-28),
        # says `listening` on stderr once it is open, and waits (SECONDS at most) for it to end.
        out["ended"] = None
        try:
            async with client.listen(tools_list_changed=True) as sub:
                print("listening", file=sys.stderr, flush=True)
                with anyio.move_on_after(float(args[0])):
                    async for _ in sub:
                        pass
                    out["ended"] = "closed"
        except Exception as e:
            # The SDK's `SubscriptionLost` carries the server's error as its cause.
            cause = f" ({e.__cause__})" if e.__cause__ is not None else ""
            out["ended"] = f"error: {e}{cause}"
    elif scenario == "pages":
        # Every page of resources/list, following nextCursor; then a cursor Warden never issued.
        import mcp_types as types

        sizes, uris, cursor = [], [], None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_resources(params=params)
            sizes.append(len(page.resources))
            uris += [r.uri for r in page.resources]
            cursor = page.next_cursor
            if not cursor or len(sizes) > 10:
                break
        out["sizes"] = sizes
        out["distinct"] = len(set(uris))
        try:
            await session.list_resources(params=types.PaginatedRequestParams(cursor="forged"))
            out["forged"] = "accepted"
        except Exception as e:
            out["forged"] = str(e)
    elif scenario == "prompt-list":
        # Each prompt listed, with its description.
        prompts = await session.list_prompts()
        out["prompts"] = {p.name: p.description for p in prompts.prompts}
    elif scenario == "catalog":
        # What the agent may see besides tools.
        resources = await session.list_resources()
        out["resources"] = sorted(r.uri for r in resources.resources)
        templates = await session.list_resource_templates()
        out["templates"] = sorted(t.uri_template for t in templates.resource_templates)
        prompts = await session.list_prompts()
        out["prompts"] = {p.name: [a.name for a in (p.arguments or [])] for p in prompts.prompts}
    elif scenario == "read":
        # Each argument a URI, read in turn; a refusal is an error naming why.
        out["reads"] = []
        for uri in args:
            try:
                out["reads"].append({"result": result_json(await session.read_resource(uri))})
            except Exception as e:  # the SDK raises the server's JSON-RPC error
                out["reads"].append({"error": str(e)})
    elif scenario == "prompt":
        name, arguments = args[0], json.loads(args[1])
        try:
            out["result"] = result_json(await session.get_prompt(name, arguments))
        except Exception as e:
            out["error"] = str(e)
    elif scenario == "complete":
        # complete prompt|template NAME ARGUMENT VALUE [CONTEXT-JSON]
        kind, name, argument, value = args[0], args[1], args[2], args[3]
        context = json.loads(args[4]) if len(args) > 4 else None
        import mcp_types as types

        ref = (
            types.PromptReference(type="ref/prompt", name=name)
            if kind == "prompt"
            else types.ResourceTemplateReference(type="ref/resource", uri=name)
        )
        try:
            r = await session.complete(ref, {"name": argument, "value": value}, context)
            out["values"] = r.completion.values
        except Exception as e:
            out["error"] = str(e)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out), flush=True)
    ANSWERED = True


# Whether the scenario's answer is printed: an error the SDK's transport raises while it shuts
# down after that (a response it no longer waits for, arriving as it closes) is not the
# server's answer, and does not fail the scenario.
ANSWERED = False


def entry():
    try:
        asyncio.run(main())
    except BaseException as e:  # an ExceptionGroup from the SDK's task group
        if not ANSWERED or isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        print(f"note: the SDK client failed while closing, after its answer: {e!r}", file=sys.stderr)


entry()
