"""medagent's expert tools over the Model Context Protocol (``medagent mcp``), on the official ``mcp`` SDK.

Any MCP client (an IDE assistant, another agent framework) lists the experts with their typed schemas and model
cards, uploads an image (base64; checked, de-identified and stored like a file) and calls the experts on its id.
Importing this package imports the SDK: the CLI imports it inside the command only."""

from medagent.mcp_server.server import McpExperts, McpLimits

__all__ = ["McpExperts", "McpLimits"]
