"""`Client` and `AsyncClient`: thin twins that run the shared flows with httpx.

Both classes only translate arguments, pick the driver (`run_sync` or `run_async`) and own the
HTTP connection pool; all protocol logic lives in `_flows` and `_protocol`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from umbra import codec, crypto
from umbra.client import _flows as flows
from umbra.client._errors import UmbraError
from umbra.client._transport import Flow, Http, SseParser, run_async, run_sync, translate
from umbra.client._types import CallResult, ChainEvent, ContractEvent, Deployment, QueryResult, Settings

__all__ = ["AsyncClient", "Client", "dev_keys"]

DEFAULT_NODE = "http://127.0.0.1:9944"
KeyLike = crypto.SigningKey | str | os.PathLike[str]


def _load_key(key: KeyLike | None) -> crypto.SigningKey | None:
    if isinstance(key, crypto.SigningKey):
        return key
    path = key if key is not None else os.environ.get("UMBRA_KEY")
    if not path:
        return None
    try:
        return crypto.load_signing_key(path)
    except crypto.KeyFileError as exc:
        raise UmbraError("bad_key", str(exc)) from None


def dev_keys(dev_json: str | os.PathLike[str] | None = None) -> dict[str, crypto.SigningKey]:
    """The funded accounts of an `umbra dev` network (alice, bob, charlie), from its dev.json
    (default: $UMBRA_DEV_JSON)."""
    path = dev_json if dev_json is not None else os.environ.get("UMBRA_DEV_JSON")
    if not path:
        raise UmbraError("no_dev_json", "no dev.json given: pass its path or set UMBRA_DEV_JSON")
    try:
        doc = json.loads(Path(path).read_text())
        return {name: crypto.load_signing_key(file) for name, file in doc["keys"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UmbraError("bad_dev_json", f"{path} is not a readable dev.json: {exc}") from None


def _id(value: bytes | str, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = codec.from_hex(value, what=what)
        except codec.CodecError as exc:
            raise UmbraError("bad_args", str(exc)) from None
    if len(raw) != 32:
        raise UmbraError("bad_args", f"{what} must be 32 bytes (0x-hex)")
    return raw


def _code(code: str | bytes | os.PathLike[str]) -> bytes:
    if isinstance(code, bytes):
        return code
    if isinstance(code, os.PathLike):
        try:
            return Path(code).read_bytes()
        except OSError as exc:
            raise UmbraError("bad_code", f"cannot read {code}: {exc.strerror}") from None
    return code.encode()


def _events(name: str, data: str, module: str | None, event: str | None) -> list[ChainEvent]:
    """The chain events in one SSE `block` message, filtered by module and name."""
    if name != "block":
        return []
    try:
        block = json.loads(data)
        height = int(block["height"])
        raw_events = list(block.get("events") or [])
    except (ValueError, KeyError, TypeError):
        raise UmbraError("bad_response", "the event stream sent a malformed block message") from None
    out = []
    for item in raw_events:
        if not isinstance(item, dict):
            continue
        if (module is None or item.get("module") == module) and (event is None or item.get("name") == event):
            out.append(
                ChainEvent(
                    height,
                    str(item.get("module")),
                    str(item.get("name")),
                    item.get("data") or {},
                    item.get("tx"),
                )
            )
    return out


class _Base:
    def __init__(self, node: str | None, key: KeyLike | None, settings: Settings | None) -> None:
        self.url = (node or os.environ.get("UMBRA_NODE") or DEFAULT_NODE).rstrip("/")
        self._key = _load_key(key)
        self._session = flows.Session(settings or Settings())

    @property
    def settings(self) -> Settings:
        return self._session.settings

    @property
    def address(self) -> str | None:
        return None if self._key is None else codec.to_hex(self._key.public_key)

    @property
    def last_height(self) -> int:
        """The block the caller's latest call settled in: queries read at least this state."""
        return self._session.last_height

    def _signer(self) -> crypto.SigningKey:
        if self._key is None:
            raise UmbraError("no_key", "this needs an account key: pass key= or set UMBRA_KEY")
        return self._key

    # Each public operation builds its flow here, once, for both twins.
    def _deploy(self, code: Any, init: Any, manifest: Any) -> Flow[Deployment]:
        return flows.deploy(self._session, self._signer(), _code(code), init=init, manifest=manifest)

    def _call(
        self, contract: Any, method: str, args: Any, replicas: int, value: int, distinct: str
    ) -> Flow[CallResult]:
        return flows.run_job(
            self._session,
            self._signer(),
            _id(contract, "contract id"),
            method,
            {} if args is None else args,
            replicas=replicas,
            value=value,
            distinct=distinct,
        )

    def _query(
        self, contract: Any, method: str, args: Any, worker: Any, min_height: int | None
    ) -> Flow[QueryResult]:
        return flows.query(
            self._session,
            self._signer(),
            _id(contract, "contract id"),
            method,
            {} if args is None else args,
            worker_id=None if worker is None else _id(worker, "worker id"),
            min_height=min_height,
        )

    def _secret(self, contract: Any, name: str, plaintext: bytes) -> Flow[dict[str, Any]]:
        if not isinstance(plaintext, bytes | bytearray):
            raise UmbraError("bad_args", "a secret's plaintext is bytes")
        return flows.upload_secret(
            self._session, self._signer(), _id(contract, "contract id"), name, bytes(plaintext)
        )

    def _blob(self, contract: Any, data: bytes) -> Flow[dict[str, Any]]:
        if not isinstance(data, bytes | bytearray):
            raise UmbraError("bad_args", "a blob is bytes")
        return flows.upload_blob(self._session, self._signer(), _id(contract, "contract id"), bytes(data))

    def _balance(self, address: Any) -> Flow[int]:
        who = self._signer().public_key if address is None else _id(address, "address")
        return flows.balance(who)

    def _transfer(self, to: Any, amount: int) -> Flow[dict[str, Any]]:
        return flows.transfer(self._session, self._signer(), _id(to, "destination address"), amount)

    def _contract_account(self, contract: Any) -> Flow[str]:
        return flows.contract_account(_id(contract, "contract id"))

    def _contract_events(self, contract: Any, since: int) -> Flow[list[ContractEvent]]:
        return flows.contract_events(self._session, _id(contract, "contract id"), since)


class Client(_Base):
    """Synchronous client: `with Client(node, key) as c: c.call(cid, "add", {"by": 2})`."""

    def __init__(
        self, node: str | None = None, key: KeyLike | None = None, *, settings: Settings | None = None
    ) -> None:
        super().__init__(node, key, settings)
        self._http = httpx.Client(base_url=self.url, timeout=self.settings.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, flow: Flow[Any]) -> Any:
        return run_sync(flow, self._http)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._run(flows.status(self._session))
        return result

    def deploy(
        self,
        code: str | bytes | os.PathLike[str],
        init: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Deploy contract source (text, bytes or a path), verify its key, run its init job."""
        result: Deployment = self._run(self._deploy(code, init, manifest))
        return result

    def call(
        self,
        contract: bytes | str,
        method: str,
        args: Mapping[str, Any] | None = None,
        replicas: int = 1,
        value: int = 0,
        distinct: str = "none",
    ) -> CallResult:
        """Run a command on chain and return its verified output; a contract exception raises."""
        result: CallResult = self._run(self._call(contract, method, args, replicas, value, distinct))
        return result

    def query(
        self,
        contract: bytes | str,
        method: str,
        args: Mapping[str, Any] | None = None,
        worker: bytes | str | None = None,
        min_height: int | None = None,
    ) -> QueryResult:
        """Run a read-only query on a worker, off chain; it reads at least the caller's last writes."""
        result: QueryResult = self._run(self._query(contract, method, args, worker, min_height))
        return result

    def upload_secret(self, contract: bytes | str, name: str, plaintext: bytes) -> dict[str, Any]:
        """Seal `plaintext` to the contract's key and store it on chain as secret `name` (owner only)."""
        result: dict[str, Any] = self._run(self._secret(contract, name, plaintext))
        return result

    def upload_blob(self, contract: bytes | str, data: bytes) -> dict[str, Any]:
        """Seal `data` to the contract's key, store it in the node's blob store and register its hash."""
        result: dict[str, Any] = self._run(self._blob(contract, data))
        return result

    def balance(self, address: bytes | str | None = None) -> int:
        """An account's free balance (default: this client's own account)."""
        result: int = self._run(self._balance(address))
        return result

    def transfer(self, to: bytes | str, amount: int) -> dict[str, Any]:
        """Send `amount` from this client's account to `to`, and wait until the tx is included.

        Returns `{"tx_hash", "block", "fee"}`; a refusal raises (e.g. `insufficient_funds`).
        """
        result: dict[str, Any] = self._run(self._transfer(to, amount))
        return result

    def contract_account(self, contract: bytes | str) -> str:
        """The account a contract is funded into (a call's `value`) and pays out of (`ctx.transfer`)."""
        result: str = self._run(self._contract_account(contract))
        return result

    def contract_events(self, contract: bytes | str, since: int = 0) -> list[ContractEvent]:
        """Every public event (`ctx.emit`) the contract emitted from height `since` on, oldest first."""
        result: list[ContractEvent] = self._run(self._contract_events(contract, since))
        return result

    def watch_events(self, module: str | None = None, name: str | None = None) -> Iterator[ChainEvent]:
        """Chain events as blocks commit (server-sent events), optionally filtered; runs until closed."""
        parser = SseParser()
        step_path = "/events"
        try:
            with self._http.stream(
                "GET", step_path, timeout=httpx.Timeout(self.settings.timeout, read=None)
            ) as reply:
                if reply.status_code >= 400:
                    raise UmbraError(
                        f"http_{reply.status_code}", f"GET {step_path} answered {reply.status_code}"
                    )
                for line in reply.iter_lines():
                    for kind, data in parser.feed(line):
                        yield from _events(kind, data, module, name)
        except httpx.HTTPError as exc:
            raise translate(exc, Http("GET", step_path), self.url) from None


class AsyncClient(_Base):
    """The asyncio twin of `Client`: same methods, awaited."""

    def __init__(
        self, node: str | None = None, key: KeyLike | None = None, *, settings: Settings | None = None
    ) -> None:
        super().__init__(node, key, settings)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.settings.timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _run(self, flow: Flow[Any]) -> Any:
        return await run_async(flow, self._http)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(flows.status(self._session))
        return result

    async def deploy(
        self,
        code: str | bytes | os.PathLike[str],
        init: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> Deployment:
        result: Deployment = await self._run(self._deploy(code, init, manifest))
        return result

    async def call(
        self,
        contract: bytes | str,
        method: str,
        args: Mapping[str, Any] | None = None,
        replicas: int = 1,
        value: int = 0,
        distinct: str = "none",
    ) -> CallResult:
        result: CallResult = await self._run(self._call(contract, method, args, replicas, value, distinct))
        return result

    async def query(
        self,
        contract: bytes | str,
        method: str,
        args: Mapping[str, Any] | None = None,
        worker: bytes | str | None = None,
        min_height: int | None = None,
    ) -> QueryResult:
        result: QueryResult = await self._run(self._query(contract, method, args, worker, min_height))
        return result

    async def upload_secret(self, contract: bytes | str, name: str, plaintext: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(self._secret(contract, name, plaintext))
        return result

    async def upload_blob(self, contract: bytes | str, data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(self._blob(contract, data))
        return result

    async def balance(self, address: bytes | str | None = None) -> int:
        result: int = await self._run(self._balance(address))
        return result

    async def transfer(self, to: bytes | str, amount: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(self._transfer(to, amount))
        return result

    async def contract_account(self, contract: bytes | str) -> str:
        result: str = await self._run(self._contract_account(contract))
        return result

    async def contract_events(self, contract: bytes | str, since: int = 0) -> list[ContractEvent]:
        result: list[ContractEvent] = await self._run(self._contract_events(contract, since))
        return result

    async def watch_events(
        self, module: str | None = None, name: str | None = None
    ) -> AsyncIterator[ChainEvent]:
        parser = SseParser()
        step_path = "/events"
        try:
            async with self._http.stream(
                "GET", step_path, timeout=httpx.Timeout(self.settings.timeout, read=None)
            ) as reply:
                if reply.status_code >= 400:
                    raise UmbraError(
                        f"http_{reply.status_code}", f"GET {step_path} answered {reply.status_code}"
                    )
                async for line in reply.aiter_lines():
                    for kind, data in parser.feed(line):
                        for event in _events(kind, data, module, name):
                            yield event
        except httpx.HTTPError as exc:
            raise translate(exc, Http("GET", step_path), self.url) from None
