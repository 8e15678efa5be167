"""`python3 -m pyro_mcp.agent`: how the guest init starts the agent."""

from pyro_mcp.agent.server import main

main()
