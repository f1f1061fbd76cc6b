"""Downstream fronts: where local callers come in (HTTP, gRPC). Both use `forwarding.Forwarder`."""
