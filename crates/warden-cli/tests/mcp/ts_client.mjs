// Drives Warden's MCP endpoint with the official MCP TypeScript SDK client (npm
// `@modelcontextprotocol/sdk`), in its default settings.
//
// Usage: node ts_client.mjs URL CREDENTIAL_FILE SCENARIO [ARG...]
//   URL: http://.../mcp, or `stdio:["warden", "stdio", ...]` to launch the server as a desktop
//   client would. SCENARIO: `list`, or `call NAME ARGUMENTS_JSON [META_JSON]`.
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
  transport = new StdioClientTransport({ command: command[0], args: command.slice(1) });
} else {
  const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
  const token = readFileSync(credFile, "utf8").trim();
  transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
}
const client = new Client({ name: "warden-e2e-ts", version: "1.0.0" });
await client.connect(transport);
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
} else {
  throw new Error(`unknown scenario ${scenario}`);
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
