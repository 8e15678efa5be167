"""The shared test machinery: the VM leak guard, the agent harness, fakes and waits."""
