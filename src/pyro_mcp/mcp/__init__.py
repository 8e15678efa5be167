"""The MCP face of pyro: profiles of tools over stdio or streamable HTTP."""
