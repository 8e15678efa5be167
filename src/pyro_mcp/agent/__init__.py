"""Runs inside the guest VM: the agent, its operations and the init; stdlib only, shipped whole."""
