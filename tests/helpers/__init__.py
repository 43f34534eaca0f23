"""Shared helpers of the integration tests: the proxy as a subprocess, origins that record, raw HTTP, clients."""
