"""An MCP server over Streamable HTTP, built on the official Python SDK's `MCPServer`, for the
end-to-end test of secrets sent in an upstream's HTTP headers.

Its one tool, `whoami`, says whether the request carried `Authorization: Bearer <key>`, with
the key this server was given in its environment (as the real service would know it), and
repeats the header it was sent: Warden must redact that before the agent sees it.

Usage: header_server.py PORT    (environment: EXPECTED_KEY)
"""

import os
import sys

from mcp.server.mcpserver import Context, MCPServer

EXPECTED = "Bearer " + os.environ["EXPECTED_KEY"]
server = MCPServer("headers")


@server.tool()
def whoami(ctx: Context) -> str:
    """Whether the caller presented the expected bearer key."""
    sent = (ctx.headers or {}).get("authorization")
    verdict = "authorized" if sent == EXPECTED else "not authorized"
    return f"{verdict}; the request said: {sent}"


server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
