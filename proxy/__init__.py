"""trace-proxy: a sidecar HTTP forward proxy that continues or starts Sentry traces."""

__version__ = "0.1.0"
