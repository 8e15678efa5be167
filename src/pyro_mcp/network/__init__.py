"""Guest networking: one network namespace per VM, its filter, NAT and DNS forwarder."""
