"""The host's client of the guest agent: one connection, many concurrent requests."""
