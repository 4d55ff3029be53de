// Drives Warden's MCP endpoint with the official MCP TypeScript SDK client (npm
// `@modelcontextprotocol/sdk`), in its default settings.
//
// Usage: node ts_client.mjs URL CREDENTIAL_FILE SCENARIO [ARG...]
//   URL: http://.../mcp, or `stdio:["warden", "stdio", ...]` to launch the server as a desktop
//   client would. SCENARIO: `list`, `call NAME ARGUMENTS_JSON [META_JSON]`, `catalog`,
//   `read URI`, `prompt NAME ARGUMENTS_JSON`, `complete PROMPT ARGUMENT VALUE`, or
//   `ask CALLS_JSON` (a client that answers sampling, elicitation and roots requests).
// Prints one JSON document describing what the server answered; the Rust test
// (`tests/mcp/ts.rs`) asserts on it. The SDK is loaded from WARDEN_E2E_NPM (`.ci/run` installs it).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const npm = process.env.WARDEN_E2E_NPM;
const sdk = (p) =>
  import(pathToFileURL(join(npm, "node_modules/@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");

const [url, credFile, scenario, ...args] = process.argv.slice(2);
let transport;
if (url.startsWith("stdio:")) {
  const { StdioClientTransport } = await sdk("client/stdio.js");
  const command = JSON.parse(url.slice("stdio:".length));
  // The SDK gives a server it launches only a default environment; the secret the test's
  // `everything` upstream needs is passed on when the test sets it.
  const { getDefaultEnvironment } = await sdk("client/stdio.js");
  const env = process.env.WARDEN_E2E_DEMO_KEY
    ? { ...getDefaultEnvironment(), WARDEN_E2E_DEMO_KEY: process.env.WARDEN_E2E_DEMO_KEY }
    : undefined;
  transport = new StdioClientTransport({ command: command[0], args: command.slice(1), env });
} else {
  const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
  const token = readFileSync(credFile, "utf8").trim();
  transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
}
// Scenario `ask` declares sampling, elicitation and roots and answers them; `asked` records
// what the server asked.
const asked = [];
const client =
  scenario === "ask"
    ? new Client(
        { name: "warden-e2e-ts", version: "1.0.0" },
        { capabilities: { sampling: {}, elicitation: {}, roots: {} } },
      )
    : new Client({ name: "warden-e2e-ts", version: "1.0.0" });
if (scenario === "ask") {
  const types = await sdk("types.js");
  client.setRequestHandler(types.CreateMessageRequestSchema, async (request) => {
    asked.push({ sampling: request.params });
    const said = request.params.messages[0].content.text;
    return {
      role: "assistant",
      content: { type: "text", text: `the model read: ${said}` },
      model: "e2e-model",
    };
  });
  client.setRequestHandler(types.ElicitRequestSchema, async (request) => {
    asked.push({ elicitation: request.params });
    return { action: "decline" };
  });
  client.setRequestHandler(types.ListRootsRequestSchema, async () => {
    asked.push({ roots: true });
    return { roots: [{ uri: "file:///e2e/project", name: "e2e project" }] };
  });
}
await client.connect(transport);
const failure = (e) => String(e?.message ?? e);
const out = {
  server: client.getServerVersion()?.name ?? null,
  protocol: transport.protocolVersion ?? null,
};
if (scenario === "list") {
  const tools = await client.listTools();
  out.tools = tools.tools.map((t) => t.name).sort();
} else if (scenario === "call") {
  const request = { name: args[0], arguments: JSON.parse(args[1]) };
  if (args[2]) request._meta = JSON.parse(args[2]);
  out.result = await client.callTool(request);
} else if (scenario === "catalog") {
  out.resources = (await client.listResources()).resources.map((r) => r.uri).sort();
  out.templates = (await client.listResourceTemplates()).resourceTemplates
    .map((t) => t.uriTemplate)
    .sort();
  out.prompts = (await client.listPrompts()).prompts.map((p) => p.name).sort();
} else if (scenario === "read") {
  try {
    out.result = await client.readResource({ uri: args[0] });
  } catch (e) {
    out.error = failure(e);
  }
} else if (scenario === "prompt") {
  try {
    out.result = await client.getPrompt({ name: args[0], arguments: JSON.parse(args[1]) });
  } catch (e) {
    out.error = failure(e);
  }
} else if (scenario === "complete") {
  try {
    const r = await client.complete({
      ref: { type: "ref/prompt", name: args[0] },
      argument: { name: args[1], value: args[2] },
    });
    out.values = r.completion.values;
  } catch (e) {
    out.error = failure(e);
  }
} else if (scenario === "ask") {
  out.results = [];
  for (const [name, args_] of JSON.parse(args[0])) {
    out.results.push(await client.callTool({ name, arguments: args_ }));
  }
  out.asked = asked;
} else {
  throw new Error(`unknown scenario ${scenario}`);
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
