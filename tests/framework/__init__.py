"""The shared test machinery: the VM leak guard, the agent and Firecracker harnesses, fakes
and state-based waits."""
