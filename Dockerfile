# trace-proxy: sidecar HTTP forward proxy that continues or starts Sentry traces.
#
#   docker build -t trace-proxy .
#   docker run --rm -p 127.0.0.1:3128:3128 -p 127.0.0.1:9901:9901 trace-proxy
#
# The configuration is /etc/trace-proxy/config.toml (a copy of config.example.toml); mount your own file there, or
# override single keys with TRACE_PROXY_<SECTION>__<KEY> and SENTRY_DSN/SENTRY_ENVIRONMENT/SENTRY_RELEASE/
# SENTRY_TRACES_SAMPLE_RATE (see README.md, "Configuration").

# Build stage: `pip install .` with the hot-path modules compiled by mypyc (TRACE_PROXY_MYPYC=1, see setup.py),
# which needs a C compiler; the compiler stays in this stage, the runtime image gets only the installed files.
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml setup.py README.md /src/
COPY build_support/ /src/build_support/
COPY proxy/ /src/proxy/
RUN TRACE_PROXY_MYPYC=1 pip install --no-cache-dir --prefix=/install /src \
    && python -c "import sys; sys.path.insert(0, '/install/lib/python3.11/site-packages'); \
import proxy.server.downstream as m; assert m.__file__.endswith('.so'), m.__file__"

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The installed package, its dependencies (all wheels for this image) and the console script.
COPY --from=build /install /usr/local

# A fixed non-root UID/GID >= 10000 (Debian already has a user named "proxy").
RUN groupadd --gid 10001 tproxy \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tproxy

COPY config.example.toml /etc/trace-proxy/config.toml

# The example file listens on 127.0.0.1, which inside a container is the container's own loopback: a service in
# another network namespace (another container, the host) could not reach it. Listen on every interface here.
# In a pod sidecar (or with --network container:...), the service shares this network namespace: override
# TRACE_PROXY_FORWARD__LISTEN=127.0.0.1:3128 so that nothing outside the pod can use the proxy. Keep the admin port
# on 0.0.0.0 if kubelet httpGet probes use it (they connect to the pod IP), else 127.0.0.1:9901 works too.
# deploy/kubernetes/deployment.yaml does both, as environment variables: these ENV lines win over a mounted file.
# Who may use the proxy is forward.allow_clients, loopback only by default (the proxy says so at start-up when it
# listens beyond loopback): right for the pod sidecar. For docker-compose, where the service is another container,
# allow the compose network, e.g. -e TRACE_PROXY_FORWARD__ALLOW_CLIENTS='["172.16.0.0/12"]' (or its exact subnet).
ENV TRACE_PROXY_FORWARD__LISTEN=0.0.0.0:3128 \
    TRACE_PROXY_ADMIN__LISTEN=0.0.0.0:9901

# Numeric, so that runtimes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /

EXPOSE 3128 9901

# Liveness from the admin port, with proxies disabled (the container may carry HTTP_PROXY itself). It needs
# admin.listen on port 9901 and reachable on 127.0.0.1 (the default above, or the pod override).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9901/healthz', timeout=2)"]

# SIGTERM: stop accepting, let requests in flight finish for up to forward.shutdown_grace seconds, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["trace-proxy"]
CMD ["--config", "/etc/trace-proxy/config.toml"]
