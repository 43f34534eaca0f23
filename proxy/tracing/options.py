"""The propagation settings, validated and pre-digested once at start-up.

Everything that depends only on configuration (the DSN's public key and org id, the static part
of the DSC a new trace carries, the text of the sample rate) is computed here, so the
per-request code in :mod:`proxy.tracing.context` only concatenates strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from proxy.tracing.baggage import SENTRY_PREFIX, encode_value
from proxy.tracing.targets import PropagationTargets

__all__ = ["Dsn", "PropagationConfig", "format_sample_rate", "parse_dsn"]

# Sentry's SaaS hosts are "o<org id>.ingest…"; the SDKs read the org id from there (§3).
_ORG_HOST_RE: Final = re.compile(r"o([0-9]+)\.")


@dataclass(frozen=True, slots=True)
class Dsn:
    """A Sentry DSN: what tracing reads of it (public key, host, org id, project id), and what a client that sends
    to Sentry needs besides (scheme, port, the path before the project id), as sentry-sdk's `Dsn` has them.

    Equality is that of the tracing fields: the DSC a DSN gives does not depend on how its server is reached."""

    public_key: str
    host: str
    org_id: str | None
    project_id: str
    scheme: str = field(default="https", compare=False)
    port: int = field(default=443, compare=False)  # explicit in the DSN, or the scheme's default
    path: str = field(default="/", compare=False)  # before the project id, ending in "/" (a self-hosted prefix)

    @property
    def envelope_url(self) -> str:
        """Where envelopes (events, spans) for this DSN's project go: sentry-sdk's envelope endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # sentry-sdk leaves an IPv6 host unbracketed
        default = 443 if self.scheme == "https" else 80
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}api/{self.project_id}/envelope/"


def parse_dsn(dsn: str) -> Dsn:
    """Parse ``{scheme}://{public_key}[:{secret}]@{host}[:{port}]/[{path}/]{project_id}``.

    Raises ``ValueError`` saying what is wrong when ``dsn`` is not a usable DSN. (An empty DSN
    means "no DSN"; :meth:`PropagationConfig.from_options` handles that before calling here.)
    """
    text = dsn.strip()
    if not text:
        raise ValueError("invalid DSN: it is empty")
    # Errors show the DSN without its keys (everything before the last '@' of the authority): they end up in logs.
    scheme, sep, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    shown = f"{scheme}{sep}<key redacted>@{authority.rpartition('@')[2]}{slash}{path}" if "@" in authority else text
    try:
        parts = urlsplit(text)
        _ = parts.port  # only to validate it: urlsplit parses the port lazily
    except ValueError as exc:
        raise ValueError(f"invalid DSN {shown!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"invalid DSN {shown!r}: the scheme must be http or https")
    if not parts.username:
        raise ValueError(f"invalid DSN {shown!r}: the public key (the part before '@') is missing")
    host = parts.hostname
    if not host:
        raise ValueError(f"invalid DSN {shown!r}: the host is missing")
    project_id = parts.path.rstrip("/").rpartition("/")[2]
    if not (project_id.isascii() and project_id.isdigit()):
        raise ValueError(f"invalid DSN {shown!r}: the path must end with a numeric project id")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid DSN {shown!r}: a DSN has no query or fragment")
    org = _ORG_HOST_RE.match(host)
    return Dsn(
        public_key=parts.username,
        host=host,
        org_id=org.group(1) if org else None,
        project_id=project_id,
        scheme=parts.scheme,
        port=parts.port if parts.port is not None else 443 if parts.scheme == "https" else 80,
        path=parts.path.rstrip("/").rpartition("/")[0] + "/",
    )


def format_sample_rate(rate: float) -> str:
    """The shortest decimal that reads back as ``rate``, never in exponent form.

    ``1.0``, ``0.25``, ``0.00001`` (where ``repr`` would give ``1e-05``): the Python SDK's text,
    minus the exponent that not every SDK's parser accepts.
    """
    return format(Decimal(repr(float(rate))), "f")


def _check_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError(f"traces_sample_rate must be a number or None, not {rate!r}")
    value = float(rate)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"traces_sample_rate must be between 0 and 1, not {rate!r}")
    return value


@dataclass(frozen=True, slots=True)
class PropagationConfig:
    """Validated propagation settings plus what is derived from them for speed.

    ``traces_sample_rate`` ``None`` means "no rate": the proxy defers sampling decisions.
    ``public_key`` / ``org_id`` are ``None`` when unknown. Build with :meth:`from_options`.
    """

    public_key: str | None
    org_id: str | None
    environment: str
    release: str
    traces_sample_rate: float | None
    targets: PropagationTargets
    strict_trace_continuation: bool
    propagate_traceparent: bool
    sample_rate_text: str | None
    """``traces_sample_rate`` as written in baggage, or ``None``."""
    sample_rate_member: str | None
    """``sentry-sample_rate={sample_rate_text}``, or ``None``."""
    new_dsc_members: tuple[str, ...]
    """The DSC members of a new trace that do not depend on the trace (after ``trace_id``,
    before ``sampled``/``sample_rand``): public_key, org_id, environment, release,
    sample_rate, each only when known."""
    new_dsc_tails: Mapping[bool | None, str]
    """A new trace's DSC after its ``trace_id`` value, by sampling decision, up to the
    ``sample_rand`` digits: ``,{new_dsc_members},sentry-sampled=…,sentry-sample_rand=0.``
    (no ``sampled`` member for ``None``). Written once here, not per trace."""

    @classmethod
    def from_options(
        cls,
        *,
        dsn: str,
        environment: str,
        release: str,
        traces_sample_rate: float | None,
        trace_propagation_targets: Sequence[str],
        strict_trace_continuation: bool,
        org_id: str,
        propagate_traceparent: bool,
    ) -> PropagationConfig:
        """Validate the options and precompute; raises ``ValueError`` for a bad DSN, rate or target.

        ``org_id`` (when not empty) wins over the one in the DSN host; ``dsn=""`` means no DSN.
        """
        parsed = parse_dsn(dsn) if dsn.strip() else None
        public_key = parsed.public_key if parsed else None
        org = org_id.strip() or (parsed.org_id if parsed else None)
        rate = _check_rate(traces_sample_rate)
        rate_text = format_sample_rate(rate) if rate is not None else None
        rate_member = SENTRY_PREFIX + "sample_rate=" + rate_text if rate_text is not None else None

        static: list[str] = []
        for key, value in (
            ("public_key", public_key),
            ("org_id", org),
            ("environment", environment),
            ("release", release),
        ):
            if value:
                static.append(SENTRY_PREFIX + key + "=" + encode_value(value))
        if rate_member is not None:
            static.append(rate_member)

        return cls(
            public_key=public_key,
            org_id=org,
            environment=environment,
            release=release,
            traces_sample_rate=rate,
            targets=PropagationTargets(trace_propagation_targets),
            strict_trace_continuation=strict_trace_continuation,
            propagate_traceparent=propagate_traceparent,
            sample_rate_text=rate_text,
            sample_rate_member=rate_member,
            new_dsc_members=tuple(static),
            new_dsc_tails=MappingProxyType(
                {
                    sampled: "".join("," + member for member in static)
                    + ("" if sampled is None else f",{SENTRY_PREFIX}sampled={'true' if sampled else 'false'}")
                    + f",{SENTRY_PREFIX}sample_rand=0."
                    for sampled in (True, False, None)
                }
            ),
        )
