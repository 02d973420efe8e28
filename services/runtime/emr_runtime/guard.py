"""What every incoming call passes before a servicer sees it (the hardening of the transport):

- a request that does not parse as its message type is INVALID_ARGUMENT naming ``request`` (gRPC
  would answer INTERNAL);
- every string field is at most its length limit (``string_limit``: one generic rule by field name,
  so a new field is covered without a table edit) and every timestamp is one a calendar holds;
  a violation is INVALID_ARGUMENT naming the field;
- no string field holds a control character or a bidirectional override or isolate
  (``forbidden_characters``, by field name too): only free text may hold tab, line feed and carriage
  return (and the bidi marks mixed-direction prose may need); ids, codes, names and every other
  field hold none, since they reach logs, look-ups and displays where such characters forge lines
  or disguise what is shown;
- a call whose client sent no deadline gets the default one (a longer one for server streams, whose
  clients resume from their cursor), so that no call runs forever.

Two rate limits answer RESOURCE_EXHAUSTED (token buckets per replica, ``TokenBuckets``):
- ``PeerRateLimitInterceptor``, per peer address, in front of authentication: a stranger's flood is
  refused before its token is parsed (``peer_address``; platform components are exempt);
- ``RateLimitInterceptor``, per client application, after authentication, so the application is
  the verified token's, never a claim a caller merely asserts (see ``client_key``).

Health checks pass untouched: probes must never be rate limited.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter

from emr_runtime.caller import caller_from_metadata
from emr_runtime.errors import FieldViolation, InvalidArgumentError, RateLimitedError, UnauthenticatedError
from emr_runtime.interceptors import HEALTH_SERVICE, Call, ScopedInterceptor
from emr_runtime.tls import client_certificate_name, from_platform_component

DEFAULT_STRING_LIMIT = 2048
# Per-field limits, by field name: the first rule whose name ends the field's name applies.
# Identifiers and codes are short everywhere in the contracts; free text gets the default.
STRING_LIMITS_BY_NAME: tuple[tuple[str, int], ...] = (
    ("page_token", 1024),
    ("_id", 128),
    ("_code", 64),
    ("code", 64),
)
# Free text, by field-name suffix: the only strings that may hold tab, line feed and carriage return
# and the bidi marks U+200E/U+200F/U+061C. Every other string field (ids, codes, names, tokens, and
# a new field until it is named here) holds no control character and no bidi mark.
FREE_TEXT_SUFFIXES: tuple[str, ...] = (
    "reason",
    "_text",
    "display",
    "note",
    "comment",
    "description",
    "justification",
)
# Bidirectional embeddings, overrides (U+202A-U+202E) and isolates (U+2066-U+2069): they reorder
# what is displayed ("Trojan Source"), so that a name or id shows as something else. No field.
_BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
# C0 controls except tab, LF, CR; DEL; C1 controls.
_CONTROLS_BUT_WHITESPACE = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
FREE_TEXT_FORBIDDEN = re.compile(f"[{_CONTROLS_BUT_WHITESPACE}{_BIDI_CONTROLS}]")
# Also tab, LF, CR, the bidi marks (LRM, RLM, ALM) and the Unicode line and paragraph separators.
PLAIN_FORBIDDEN = re.compile(
    f"[{_CONTROLS_BUT_WHITESPACE}\t\n\r\u061c\u200e\u200f\u2028\u2029{_BIDI_CONTROLS}]"
)
UNIDENTIFIED_CLIENT = "unidentified"
TIMESTAMP = "google.protobuf.Timestamp"
# The range google.protobuf.Timestamp defines (0001-01-01 to 9999-12-31): outside it, converting to
# a datetime fails.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# An IPv6 peer is limited by its /64: one host or home network commonly holds a whole /64, so a
# single address would let it rotate through 2**64 buckets.
IPV6_PEER_PREFIX = 64
UNKNOWN_PEER = "unknown"
# A call refused UNAUTHENTICATED costs its address this many calls of its per-peer budget: an
# address whose calls carry valid tokens may make the whole budget, a stranger's failures a
# twentieth of it (with the defaults, 50 a second).
UNAUTHENTICATED_PEER_COST = 20
# A call refused by the per-peer limit is answered after a pause of half to all of this (spread,
# so that a flood's calls do not come back all at once; never past the call's deadline): a client
# that calls again as soon as it is answered, as a flood does, then waits instead of keeping the
# replica busy refusing it. At most MAX_PAUSED_REFUSALS wait at once per replica (each holds a
# little memory); beyond them refusals are answered at once.
PEER_REFUSAL_PAUSE_SECONDS = 1.0
MAX_PAUSED_REFUSALS = 1000
RATE_LIMITED_CALLS = Counter(
    "emr_rate_limited_calls_total",
    "Calls refused RESOURCE_EXHAUSTED by a rate limit: per peer address (limit=peer, before "
    "authentication) or per client application (limit=client_application).",
    ("limit",),
)
for _limit in ("peer", "client_application"):
    RATE_LIMITED_CALLS.labels(_limit)  # a zero series from the start: rate() and alerts see 0, not nothing


def string_limit(field_name: str) -> int:
    """The most characters a string field of this name may carry."""
    for suffix, limit in STRING_LIMITS_BY_NAME:
        if field_name.endswith(suffix):
            return limit
    return DEFAULT_STRING_LIMIT


def is_free_text(field_name: str) -> bool:
    """Whether a string field of this name is free text (may hold tab and line breaks)."""
    return field_name.endswith(FREE_TEXT_SUFFIXES)


def forbidden_characters(field_name: str) -> re.Pattern[str]:
    """The characters a string field of this name must not hold."""
    return FREE_TEXT_FORBIDDEN if is_free_text(field_name) else PLAIN_FORBIDDEN


def _character_violation(text: str, forbidden: re.Pattern[str]) -> str:
    """Why ``text`` is refused for its characters, "" when it is not."""
    found = forbidden.search(text)
    if found is None:
        return ""
    character = found.group()
    code = f"U+{ord(character):04X}"
    if re.fullmatch(f"[{_BIDI_CONTROLS}]", character):
        return f"must not contain a bidirectional override or isolate ({code})"
    if forbidden is FREE_TEXT_FORBIDDEN:
        return f"must not contain a control character ({code}); tab and line breaks are allowed"
    return f"must not contain control characters, line breaks or bidirectional marks ({code})"


@dataclass(frozen=True)
class _Checks:
    strings: dict[str, tuple[int, re.Pattern[str]]]  # field name -> (limit, forbidden characters)
    timestamps: frozenset[str]  # google.protobuf.Timestamp fields
    messages: frozenset[str]  # other message-typed fields to descend into (maps: none in the contracts)


@cache
def _checks(descriptor: Descriptor) -> _Checks:
    strings: dict[str, tuple[int, re.Pattern[str]]] = {}
    timestamps: set[str] = set()
    messages: set[str] = set()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            strings[field.name] = (string_limit(field.name), forbidden_characters(field.name))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
            if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
                timestamps.add(field.name)
            else:
                messages.add(field.name)
    return _Checks(strings, frozenset(timestamps), frozenset(messages))


def _valid_timestamp(stamp: Message) -> bool:
    seconds: int = stamp.seconds  # type: ignore[attr-defined]
    nanos: int = stamp.nanos  # type: ignore[attr-defined]
    return MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS and 0 <= nanos < 1_000_000_000


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def request_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every string field of ``message`` (at any depth) longer than its limit or holding a
    character its kind of field must not hold, and every timestamp out of the range of
    google.protobuf.Timestamp, by field path."""
    checks = _checks(message.DESCRIPTOR)
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        name = field.name
        path = f"{prefix}{name}"
        repeated = field.is_repeated
        if name in checks.strings:
            limit, forbidden = checks.strings[name]
            items = enumerate(value) if repeated else ((None, value),)
            for index, text in items:
                at = path if index is None else f"{path}[{index}]"
                if len(text) > limit:
                    found.append(FieldViolation(at, f"at most {limit} characters"))
                elif reason := _character_violation(text, forbidden):
                    found.append(FieldViolation(at, reason))
        elif name in checks.timestamps:
            items = enumerate(value) if repeated else ((None, value),)
            for index, stamp in items:
                if not _valid_timestamp(stamp):
                    at = path if index is None else f"{path}[{index}]"
                    found.append(FieldViolation(at, "not a valid time"))
        elif name in checks.messages:
            if repeated:
                for index, item in enumerate(value):
                    found.extend(request_violations(item, f"{path}[{index}]."))
            else:
                found.extend(request_violations(value, f"{path}."))
    return found


class MalformedRequest:
    """Stands in for a request whose bytes do not parse, so that the guard can refuse it."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeError):
            return MalformedRequest(type_name)

    return deserialize


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    MAX_KEYS = 10_000  # keys come from callers: bound the memory they can take

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Takes one token; returns 0 when granted, else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self._rate

    def charge(self, key: str, tokens: float) -> None:
        """Takes ``tokens`` more from ``key``'s bucket, into debt down to minus the burst: later
        calls wait until it has refilled past the debt."""
        now = self._clock()
        held, at = self._buckets.get(key, (self._burst, now))
        held = min(self._burst, held + (now - at) * self._rate)
        self._remember(key, max(held - tokens, -self._burst), now)

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.MAX_KEYS:
            # Forget buckets that have refilled (from the deepest debt): forgetting them changes nothing.
            full_after = 2 * self._burst / self._rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._buckets[key] = (tokens, now)


class _ApiInterceptor(ScopedInterceptor):
    """Applies to the API, never to health checks: probes must pass untouched."""

    def applies_to(self, full_method: str) -> bool:
        return super().applies_to(full_method) and not full_method.startswith(f"/{HEALTH_SERVICE}/")


class GuardInterceptor(_ApiInterceptor):
    """Applies the module's checks; sits inside the error interceptor, which maps what it raises."""

    def __init__(self, default_deadline_seconds: float, stream_default_deadline_seconds: float) -> None:
        self._default_deadline = default_deadline_seconds
        self._stream_default_deadline = stream_default_deadline_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await super().intercept_service(continuation, handler_call_details)
        deserializer = getattr(handler, "request_deserializer", None)
        if handler is None or deserializer is None or not self.applies_to(handler_call_details.method):
            return handler
        tolerant = _tolerant(deserializer, handler_call_details.method)
        return handler._replace(request_deserializer=tolerant)  # type: ignore[attr-defined,no-any-return]

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        if isinstance(call.request, MalformedRequest):
            raise InvalidArgumentError([FieldViolation("request", "not a valid serialized request message")])
        violations = request_violations(call.request)
        if violations:
            raise InvalidArgumentError(violations)
        if _has_deadline(call.context):
            yield
            return
        deadline = self._stream_default_deadline if call.streaming else self._default_deadline
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise  # a timeout of the handler's own, not ours
            await call.context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no deadline was sent; the default of {deadline:g} s passed",
            )


class RateLimitInterceptor(_ApiInterceptor):
    """Token bucket per client application (``client_key``); health checks are never limited."""

    def __init__(self, rate_per_second: float, burst: float) -> None:
        self._buckets = TokenBuckets(rate_per_second, burst)

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        wait = self._buckets.take(client_key(call.context))
        if wait > 0:
            RATE_LIMITED_CALLS.labels("client_application").inc()
            raise RateLimitedError(wait)
        yield


class PeerRateLimitInterceptor(_ApiInterceptor):
    """Token bucket per peer address (``peer_address``), in front of authentication, so that one
    address's flood of calls without a valid token is refused at the cheapest point: a call refused
    UNAUTHENTICATED costs the address ``UNAUTHENTICATED_PEER_COST`` calls, and a refusal here is
    answered after a pause (``PEER_REFUSAL_PAUSE_SECONDS``).

    Calls presenting a platform component's certificate (``emr_runtime.tls.PLATFORM_CERTIFICATE_NAMES``)
    are exempt: the gateway forwards every hospital app's HTTP calls from one address, and services
    call each other from a few pods (in dev and tests every process is 127.0.0.1), so limiting them
    per address would starve the platform; they are still limited per client application after
    authentication. Everyone else, including tools with the development client certificate, is
    limited; the default is high enough for that (``ServiceSettings.peer_rate_limit_per_second``)."""

    def __init__(self, rate_per_second: float, burst: float) -> None:
        self._buckets = TokenBuckets(rate_per_second, burst)
        self._paused = 0

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        if from_platform_component(call.context):
            yield
            return
        peer = peer_address(call.context.peer())
        wait = self._buckets.take(peer)
        if wait > 0:
            RATE_LIMITED_CALLS.labels("peer").inc()
            await self._pause(call)
            raise RateLimitedError(wait)
        try:
            yield
        except UnauthenticatedError:
            self._buckets.charge(peer, UNAUTHENTICATED_PEER_COST - 1)
            raise

    async def _pause(self, call: Call) -> None:
        if self._paused >= MAX_PAUSED_REFUSALS:
            return
        pause = PEER_REFUSAL_PAUSE_SECONDS * random.uniform(0.5, 1.0)  # noqa: S311 (a spread, not a secret)
        remaining = call.context.time_remaining()
        if remaining is not None:
            pause = min(pause, remaining - 0.1)  # answered before the caller's deadline
        if pause <= 0:
            return
        self._paused += 1
        try:
            await asyncio.sleep(pause)
        finally:
            self._paused -= 1


def peer_address(peer: str) -> str:
    """The rate-limit key of a gRPC peer string: its IP address without the port (``ipv4:10.0.0.7:5100``
    -> ``10.0.0.7``; ``ipv6:%5B::ffff:10.0.0.7%5D:5100`` -> ``10.0.0.7``; other IPv6 addresses by
    their /64, ``ipv6:%5B2001:db8::1%5D:5100`` -> ``2001:db8::/64``); ``unix`` for a Unix socket;
    ``unknown`` for anything else."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return "unix"
    if scheme not in ("ipv4", "ipv6"):
        return UNKNOWN_PEER
    host = urllib.parse.unquote(rest).rpartition(":")[0]  # gRPC escapes IPv6 brackets as %5B, %5D
    host = host.removeprefix("[").removesuffix("]").partition("%")[0]  # and a zone: fe80::1%eth0
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return UNKNOWN_PEER
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PEER_PREFIX), strict=False))
    return str(address)


def client_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Whose bucket a call draws from: the caller's client application; without one, the subject of
    its TLS client certificate (so each platform service calling another has its own bucket);
    else one shared bucket."""
    application = caller_from_metadata(context.invocation_metadata()).client_application
    if application:
        return application
    name = client_certificate_name(context)
    return f"certificate:{name}" if name else UNIDENTIFIED_CLIENT


def _has_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    remaining = context.time_remaining()
    # gRPC reports "no deadline" as None or as an effectively infinite remainder.
    return remaining is not None and remaining < 10 * 365 * 86400
