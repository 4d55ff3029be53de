// A peer for the MCP benchmark (`benches/mcp_sdk.rs`): the plain governance proxy an engineer
// would write in TypeScript with the official SDK (npm `@modelcontextprotocol/sdk`), measured in
// the same rounds as Warden. It serves MCP on stdio with the SDK's `Server`, checks each call's
// tool against an allow-list, appends the decision to an audit log, calls the upstream with the
// SDK's `Client` over stdio, and appends the outcome with a SHA-256 of the result.
//
// Usage: node peer_proxy.mjs LOG SYNC ALLOWED CMD [ARG...]
//   LOG: the audit log (created or truncated). SYNC: `sync` to `fdatasync` each decision before
//   the call goes on (the durability Warden's ledger gives a decision), `nosync` to leave it to
//   the page cache. ALLOWED: comma-separated tool names the policy allows. CMD ARG...: the
//   upstream. The SDK is loaded from WARDEN_E2E_NPM (`.ci/run` installs it).
import { createHash } from "node:crypto";
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const npm = process.env.WARDEN_E2E_NPM;
const sdk = (p) =>
  import(pathToFileURL(join(npm, "node_modules/@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Server } = await sdk("server/index.js");
const { StdioServerTransport } = await sdk("server/stdio.js");
const { Client } = await sdk("client/index.js");
const { StdioClientTransport } = await sdk("client/stdio.js");
const { CallToolRequestSchema, ListToolsRequestSchema } = await sdk("types.js");

const [logPath, syncMode, allowedList, command, ...args] = process.argv.slice(2);
const allowed = new Set(allowedList.split(","));
const sync = syncMode === "sync";
const log = openSync(logPath, "w");
let seq = 0;

const append = (entry, durable) => {
  writeSync(log, JSON.stringify(entry) + "\n");
  if (durable) fdatasyncSync(log);
};

const upstream = new Client({ name: "peer-proxy", version: "1.0.0" });
await upstream.connect(new StdioClientTransport({ command, args, stderr: "inherit" }));

const server = new Server(
  { name: "peer-proxy", version: "1.0.0" },
  { capabilities: { tools: {} } },
);
server.setRequestHandler(ListToolsRequestSchema, async (request) => {
  const listed = await upstream.listTools(request.params);
  return { ...listed, tools: listed.tools.filter((t) => allowed.has(t.name)) };
});
server.setRequestHandler(CallToolRequestSchema, async (request) => {
  const { name, arguments: callArgs } = request.params;
  const id = ++seq;
  const allow = allowed.has(name);
  append({ id, at: Date.now(), tool: name, arguments: callArgs, decision: allow ? "allow" : "deny" }, sync);
  if (!allow) {
    return { content: [{ type: "text", text: `denied: ${name} is not allowed` }], isError: true };
  }
  const result = await upstream.callTool({ name, arguments: callArgs });
  const digest = createHash("sha256").update(JSON.stringify(result)).digest("hex");
  append({ id, at: Date.now(), outcome: result.isError ? "error" : "ok", result: digest }, false);
  return result;
});

const transport = new StdioServerTransport();
transport.onclose = async () => {
  await upstream.close();
  closeSync(log);
  process.exit(0);
};
await server.connect(transport);
