"""Who may hold a server thread, for how long: identity and call caps before any message is read.

``Admission`` is a gRPC server interceptor that rewrites every method handler of the server (the
coordinator's and the health service's) so that, in this order and before a single request message is
read:

1. the caller's identity is the verified client certificate's one printable common name
   (``proto.tls.peer_common_name``), else ``UNAUTHENTICATED``;
2. a name that is not in ``run.participants`` may call only the health service (monitoring), else
   ``PERMISSION_DENIED``;
3. the caller is under its cap of concurrent calls (``max_calls_per_participant`` per listed name,
   ``max_monitoring_calls`` per name in ``server.monitors`` and for all other names together), else
   ``RESOURCE_EXHAUSTED`` at once.

Every handler is served as a request-streaming one, whatever its declared arity, because gRPC Python reads
the one message of a unary call inside a server thread without any bound: a caller that opens a call and
sends nothing would hold that thread until its own deadline. Here every wait for a client's message is
bounded by ``idle_timeout_s`` (the call is cut, and the caller sees ``CANCELLED``), and bytes that do not
decode answer ``INVALID_ARGUMENT``. With the server's thread pool sized by
``CoordinatorConfig.worker_threads`` (every
admitted call has a thread of its own), no number of idle, slow or refused callers delays a listed
participant's call.

Refusals are logged through a :class:`RefusalLog`: at most ``burst`` lines a minute for each caller (each
listed name; all names outside ``run.participants`` together; all callers without an identity together), and
then one line saying how many were left out, so that no caller can fill the operator's log or disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from coordinator.errors import MalformedMessageError
from proto.tls import PeerIdentityError, peer_common_name

logger = logging.getLogger(__name__)

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"


REFUSAL_BURST = 100
"""Refusal lines logged per caller per window before the rest are only counted."""
REFUSAL_WINDOW_S = 60.0

UNAUTHENTICATED_CALLERS = "callers without a verified identity"
OUTSIDE_CALLERS = "names outside run.participants"


class RefusalLog:
    """Refusal lines, at most ``burst`` per ``window_s`` for each caller; the rest counted, then summed up.

    ``caller`` keys the budget: a listed participant's name, or one of the two shared keys above (callers
    outside the run can mint any number of names, so they share one key and the table of keys stays as
    small as the run's roster). The count of left-out lines is logged with the first line of the caller's
    next window. Thread-safe.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = REFUSAL_BURST,
        window_s: float = REFUSAL_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, list[float | int]] = {}  # caller -> [window start, lines, left out]

    def refused(self, caller: str, message: str, *args: object) -> None:
        """Log ``message % args`` at info level unless ``caller`` already had ``burst`` lines this window."""
        now = self.clock()
        with self._lock:
            window = self._windows.get(caller)
            left_out = 0
            if window is None or now - float(window[0]) >= self.window_s:
                left_out = int(window[2]) if window is not None else 0
                window = [now, 0, 0]
                self._windows[caller] = window
            if int(window[1]) >= self.burst:
                window[2] = int(window[2]) + 1
                return
            window[1] = int(window[1]) + 1
        if left_out:
            self.log.warning(
                "%d more refusals of %s were not logged in the last window (at most %d lines each %.0f s)",
                left_out,
                caller,
                self.burst,
                self.window_s,
            )
        self.log.info(message, *args)


class CallEndedError(grpc.RpcError):
    """A call whose requests stopped because gRPC ended it (cancelled, expired or cut), not its caller."""


@dataclasses.dataclass(frozen=True)
class CallLimits:
    """How many calls each caller may have open at once, and how long a call may wait for a message."""

    max_calls_per_participant: int
    max_monitoring_calls: int
    idle_timeout_s: float


class IdleWatchdog:
    """Cuts a call whose caller has not sent its next message within ``idle_s`` (one thread for all calls)."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, grpc.ServicerContext]] = []
        self._armed: set[int] = set()
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None  # started at the first wait, a daemon

    @contextlib.contextmanager
    def bounded(self) -> Iterator[Callable[[grpc.ServicerContext], int]]:
        """Yield ``arm(context)``: the wait that follows is cut after ``idle_s`` (see ``expired``)."""
        armed: list[int] = []

        def arm(context: grpc.ServicerContext) -> int:
            token = next(self._ids)
            with self._cond:
                heapq.heappush(self._heap, (time.monotonic() + self.idle_s, token, context))
                self._armed.add(token)
                armed.append(token)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="idle-watchdog", daemon=True)
                    self._thread.start()
                self._cond.notify()
            return token

        try:
            yield arm
        finally:
            with self._cond:
                self._armed.difference_update(armed)
                self._expired.difference_update(armed)

    def expired(self, token: int) -> bool:
        """Return whether the wait armed as ``token`` was cut by the watchdog (ask within ``bounded``)."""
        with self._cond:
            return token in self._expired

    def _loop(self) -> None:
        while True:
            due: list[grpc.ServicerContext] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][1] not in self._armed):
                    _, token, context = heapq.heappop(self._heap)
                    if token in self._armed:
                        self._armed.discard(token)
                        self._expired.add(token)
                        due.append(context)
                if not due:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            for context in due:
                context.cancel()


class Admission(grpc.ServerInterceptor):
    """The server interceptor described in the module docstring."""

    def __init__(
        self, *, participants: frozenset[str], limits: CallLimits, monitors: frozenset[str] = frozenset()
    ) -> None:
        self.participants = participants
        self.monitors = monitors
        self.limits = limits
        self.watchdog = IdleWatchdog(limits.idle_timeout_s)
        self._lock = threading.Lock()
        self._open: dict[str | None, int] = {}
        self.refusals = RefusalLog(logger)

    # ------------------------------------------------------------------ admission
    @contextlib.contextmanager
    def admitted(self, context: grpc.ServicerContext, method: str) -> Iterator[str]:
        """Yield the caller's verified name while it holds one of its calls; abort the call when refused."""
        try:
            name = peer_common_name(context)
        except PeerIdentityError as error:
            self.refusals.refused(UNAUTHENTICATED_CALLERS, "%s refused (UNAUTHENTICATED): %s", method, error)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise AssertionError("unreachable") from None  # context.abort raises
        listed = name in self.participants
        if not listed and not method.startswith(HEALTH_SERVICE_PREFIX):
            message = f"certificate name {name!r} is not in run.participants of this coordinator"
            self.refusals.refused(self._caller(name), "%s refused (PERMISSION_DENIED): %s", method, message)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        # Every name neither in the run nor a monitor shares one pool: any CA name is free to mint.
        pool = name if listed or name in self.monitors else None
        limit = self.limits.max_calls_per_participant if listed else self.limits.max_monitoring_calls
        with self._lock:
            open_calls = self._open.get(pool, 0)
            if open_calls < limit:
                self._open[pool] = open_calls + 1
        if open_calls >= limit:
            whose = f"{name!r}" if pool is not None else "names outside run.participants"
            message = f"{whose} already {'has' if pool is not None else 'have'} {limit} calls open"
            self.refusals.refused(
                name if pool is not None else OUTSIDE_CALLERS,
                "%s from %s refused (RESOURCE_EXHAUSTED): %s",
                method,
                name,
                message,
            )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        try:
            yield name
        finally:
            with self._lock:
                self._open[pool] -= 1

    def _caller(self, name: str) -> str:
        """Return the refusal-log key of an admitted caller."""
        return name if name in self.participants or name in self.monitors else OUTSIDE_CALLERS

    # ------------------------------------------------------------------ bounded, decoded reads
    def _log_end(self, method: str, name: str, token: int) -> None:
        """Say in one line why a call's stream ended before its caller closed it."""
        if self.watchdog.expired(token):
            logger.info("%s from %s cut: no message for %.0f s", method, name, self.watchdog.idle_s)
        else:
            logger.info("%s from %s ended: cancelled by the caller or past its deadline", method, name)

    def messages(
        self,
        raw: Iterator[bytes],
        context: grpc.ServicerContext,
        *,
        method: str,
        name: str,
        decode: Callable[[bytes], Any] | None,
    ) -> Iterator[Any]:
        """Yield the caller's messages, decoded; each wait is bounded and bytes that do not decode refused.

        A cut, cancelled or expired call ends with the ``grpc.RpcError`` gRPC raised (one info line here);
        undecodable bytes raise ``MalformedMessageError`` naming the message's position.
        """
        position = 0
        while True:
            with self.watchdog.bounded() as arm:
                token = arm(context)
                try:
                    data = next(raw)
                except StopIteration:
                    if context.is_active():
                        return  # the caller closed its side: the stream is complete
                    # gRPC may end the requests of a cancelled, expired or cut call as if the caller had
                    # closed them: that is an end of the call, not a short stream to judge.
                    self._log_end(method, name, token)
                    raise CallEndedError(f"{method} from {name} ended before its stream did") from None
                except grpc.RpcError:
                    self._log_end(method, name, token)
                    raise
            if decode is None:
                yield data
            else:
                try:
                    yield decode(data)
                except (DecodeError, ValueError, TypeError) as error:
                    raise MalformedMessageError(
                        f"message {position} of {method} does not decode: {error}"
                    ) from None
            position += 1

    def _one(
        self, raw: Iterator[bytes], context: grpc.ServicerContext, *, method: str, name: str, decode: Any
    ) -> Any:
        try:
            for message in self.messages(raw, context, method=method, name=name, decode=decode):
                return message
        except MalformedMessageError as error:
            self.refusals.refused(
                self._caller(name), "%s from %s refused (INVALID_ARGUMENT): %s", method, name, error
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        message = f"{method} requires exactly one request message, the stream ended without one"
        self.refusals.refused(
            self._caller(name), "%s from %s refused (INVALID_ARGUMENT): %s", method, name, message
        )
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the interceptor
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        decode = handler.request_deserializer
        serialize = handler.response_serializer

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            def unary_unary(raw: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                with self.admitted(context, method) as name:
                    request = self._one(raw, context, method=method, name=name, decode=decode)
                    return behavior(request, context)

            return grpc.stream_unary_rpc_method_handler(unary_unary, response_serializer=serialize)

        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            def unary_stream(raw: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
                with self.admitted(context, method) as name:
                    request = self._one(raw, context, method=method, name=name, decode=decode)
                    yield from streaming(request, context)

            return grpc.stream_stream_rpc_method_handler(unary_stream, response_serializer=serialize)

        if handler.stream_unary is not None:
            collecting = handler.stream_unary

            def stream_unary(raw: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                with self.admitted(context, method) as name:
                    return collecting(
                        self.messages(raw, context, method=method, name=name, decode=decode), context
                    )

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)

        both = handler.stream_stream

        def stream_stream(raw: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            with self.admitted(context, method) as name:
                yield from both(self.messages(raw, context, method=method, name=name, decode=decode), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)
