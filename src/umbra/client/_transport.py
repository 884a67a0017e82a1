"""Sans-IO plumbing: flows yield `Http`/`Sleep` steps and two drivers perform them.

Every client operation is written once, in `_flows`, as a generator that yields what it needs
done and receives the result. `run_sync` performs the steps with `httpx.Client` and
`time.sleep`; `run_async` with `httpx.AsyncClient` and `asyncio.sleep`. So `Client` and
`AsyncClient` share all logic and differ only in how they wait. Transport failures are turned
into `UmbraError` here, at the edge, and thrown back into the flow, which may retry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from umbra.client._errors import UmbraError

__all__ = ["Flow", "Http", "Sleep", "SseParser", "run_async", "run_sync"]

T = TypeVar("T")

# Remote error text is shown to the user; keep it to a line so a hostile server cannot flood it.
_MAX_REMOTE_MESSAGE = 500


@dataclass(frozen=True)
class Http:
    """One HTTP exchange. `path` is relative to the node, or an absolute URL (a worker)."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    content: bytes | None = None
    timeout: float | None = None
    raw: bool = False  # the body as bytes, not JSON
    missing_ok: bool = False  # a 404 answers None instead of raising


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Http | Sleep
Flow = Generator[Step, Any, T]


def _where(step: Http) -> str:
    return f"{step.method} {step.path}"


def interpret(step: Http, status: int, content: bytes) -> Any:
    """The value a flow receives for a response, or the `UmbraError` it represents."""
    if status == 404 and step.missing_ok:
        return None
    if status >= 400:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            raise UmbraError(
                str(err.get("code", "error"))[:100], str(err.get("message", ""))[:_MAX_REMOTE_MESSAGE]
            )
        raise UmbraError(f"http_{status}", f"{_where(step)} answered {status}")
    if step.raw:
        return content
    try:
        return json.loads(content)
    except ValueError:
        raise UmbraError("bad_response", f"{_where(step)} did not answer JSON") from None


def translate(exc: httpx.HTTPError, step: Http, base: str) -> UmbraError:
    target = step.path if step.path.startswith(("http://", "https://")) else base + step.path
    if isinstance(exc, httpx.TimeoutException):
        return UmbraError("timeout", f"{target} did not answer {step.method} in time")
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return UmbraError("bad_url", f"{target} is not a usable URL")
    return UmbraError("unreachable", f"cannot reach {target}: {type(exc).__name__}")


def _request_kwargs(step: Http) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": dict(step.params) if step.params else None}
    if step.json is not None:
        kwargs["json"] = step.json
    if step.content is not None:
        kwargs["content"] = step.content
    if step.timeout is not None:
        kwargs["timeout"] = step.timeout
    return kwargs


@dataclass
class _Stepper:
    """Advances a flow by one result (or error) at a time; `done` once it returned."""

    flow: Flow[Any]
    done: bool = False
    value: Any = None
    pending: Step | None = field(default=None, init=False)

    def advance(self, result: Any = None, error: UmbraError | None = None) -> None:
        try:
            self.pending = self.flow.throw(error) if error is not None else self.flow.send(result)
        except StopIteration as stop:
            self.done, self.value, self.pending = True, stop.value, None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # A reply missing a field or of the wrong shape must not crash the caller with a
            # foreign exception: it is the server's fault, and says so.
            raise UmbraError(
                "bad_response",
                f"a server sent a reply of an unexpected shape ({type(exc).__name__}: {exc})"[:300],
            ) from None


def run_sync(flow: Flow[T], http: httpx.Client) -> T:
    stepper = _Stepper(flow)
    stepper.advance()
    while not stepper.done:
        step = stepper.pending
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            stepper.advance()
            continue
        assert isinstance(step, Http)
        try:
            reply = http.request(step.method, step.path, **_request_kwargs(step))
            result = interpret(step, reply.status_code, reply.content)
        except httpx.HTTPError as exc:
            stepper.advance(error=translate(exc, step, str(http.base_url).rstrip("/")))
        except UmbraError as exc:
            stepper.advance(error=exc)
        else:
            stepper.advance(result)
    value: T = stepper.value
    return value


async def run_async(flow: Flow[T], http: httpx.AsyncClient) -> T:
    stepper = _Stepper(flow)
    stepper.advance()
    while not stepper.done:
        step = stepper.pending
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            stepper.advance()
            continue
        assert isinstance(step, Http)
        try:
            reply = await http.request(step.method, step.path, **_request_kwargs(step))
            result = interpret(step, reply.status_code, reply.content)
        except httpx.HTTPError as exc:
            stepper.advance(error=translate(exc, step, str(http.base_url).rstrip("/")))
        except UmbraError as exc:
            stepper.advance(error=exc)
        else:
            stepper.advance(result)
    value: T = stepper.value
    return value


class SseParser:
    """Server-sent events (the node's GET /events), fed line by line; yields (event, data) pairs."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str, str]]:
        line = line.rstrip("\r\n")
        if not line:
            if self._data:
                yield self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            return
        if line.startswith(":"):
            return  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
