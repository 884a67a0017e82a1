"""`umbra stake | delegate | unbond | withdraw | pool | rewards`: stake pools from the command line.

Each function returns the JSON object the command prints; refusals raise `UmbraError` with the
chain's typed code (`staking.not_operator`, `staking.bad_shares`, ...). Amounts and shares are
integers in the smallest unit. Reads go through `GET /state/staking/...`; reward and slash history
through `GET /history/events`.
"""

from __future__ import annotations

from typing import Any

from umbra import codec, crypto
from umbra.client._node import NodeClient, UmbraError

__all__ = ["delegate", "pool", "rewards", "stake", "unbond", "withdraw"]

_HISTORY_PAGES = 1_000  # x 10,000 blocks: a bound, never reached by a dev chain


def _state(client: NodeClient, item: str, key: bytes | None = None) -> Any:
    """A staking storage value (None if absent)."""
    params = {} if key is None else {"key": codec.to_hex(key)}
    try:
        return client.get(f"/state/staking/{item}", **params)["value"]
    except UmbraError as exc:
        if exc.code == "not_found":
            return None
        raise


def _pool(client: NodeClient, worker: bytes) -> dict[str, Any]:
    found = _state(client, "pool", worker)
    if found is None:
        raise UmbraError(
            "no_pool", f"worker {codec.to_hex(worker)} has no stake pool (its operator opens it)"
        )
    pool: dict[str, Any] = found
    return pool


def _value(shares: int, pool: dict[str, Any]) -> int:
    return shares * int(pool["stake"]) // int(pool["shares"]) if pool["shares"] else 0


def _tx_events(client: NodeClient, receipt: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = client.tx(codec.from_hex(str(receipt["tx_hash"]), length=32, what="tx hash"))
    return [
        e["data"] for e in found.get("events", []) if e.get("module") == "staking" and e.get("name") == name
    ]


def _positive(amount: int, what: str) -> None:
    if amount < 1:
        raise UmbraError(f"bad_{what}", f"{what} must be at least 1")


def _mine(client: NodeClient, worker: bytes, who: bytes, pool: dict[str, Any]) -> dict[str, int]:
    shares = int(_state(client, "share", worker + who) or 0)
    return {"your_shares": shares, "your_value": _value(shares, pool)}


def stake(
    url: str, signer: crypto.SigningKey, worker: bytes, amount: int, commission: int | None
) -> dict[str, Any]:
    """Open the worker's pool if it has none (its operator only), set the commission if asked,
    then delegate `amount`."""
    _positive(amount, "amount")
    with NodeClient(url) as client:
        existing = _state(client, "pool", worker)
        created = False
        if existing is None:
            client.call(signer, "staking", "create_pool", worker=worker, commission_ppm=commission or 0)
            created = True
        elif commission is not None and int(existing["commission_ppm"]) != commission:
            client.call(signer, "staking", "set_commission", worker=worker, commission_ppm=commission)
        receipt = client.call(signer, "staking", "delegate", worker=worker, amount=amount)
        minted = sum(int(e["shares"]) for e in _tx_events(client, receipt, "Delegated"))
        current = _pool(client, worker)
        return {
            "worker": codec.to_hex(worker),
            "amount": amount,
            "shares": minted,
            "pool_created": created,
            "commission_ppm": int(current["commission_ppm"]),
            "tx_hash": receipt["tx_hash"],
            "block": receipt["block"],
            **_mine(client, worker, signer.public_key, current),
        }


def delegate(url: str, signer: crypto.SigningKey, worker: bytes, amount: int) -> dict[str, Any]:
    _positive(amount, "amount")
    with NodeClient(url) as client:
        _pool(client, worker)
        receipt = client.call(signer, "staking", "delegate", worker=worker, amount=amount)
        minted = sum(int(e["shares"]) for e in _tx_events(client, receipt, "Delegated"))
        return {
            "worker": codec.to_hex(worker),
            "amount": amount,
            "shares": minted,
            "tx_hash": receipt["tx_hash"],
            "block": receipt["block"],
            **_mine(client, worker, signer.public_key, _pool(client, worker)),
        }


def unbond(url: str, signer: crypto.SigningKey, worker: bytes, shares: int) -> dict[str, Any]:
    _positive(shares, "shares")
    with NodeClient(url) as client:
        _pool(client, worker)
        receipt = client.call(signer, "staking", "unbond", worker=worker, shares=shares)
        (event,) = _tx_events(client, receipt, "Unbonded") or [{"unlock_height": None}]
        paid = [
            e for e in _tx_events(client, receipt, "Withdrawn") if e["who"] == codec.to_hex(signer.public_key)
        ]
        current = _pool(client, worker)
        return {
            "worker": codec.to_hex(worker),
            "shares": shares,
            "unlock_height": event["unlock_height"],
            "value_now": _value(shares, current),
            "tx_hash": receipt["tx_hash"],
            "block": receipt["block"],
            "withdrawn": sum(int(e["amount"]) for e in paid),
            **_mine(client, worker, signer.public_key, current),
        }


def withdraw(url: str, signer: crypto.SigningKey, worker: bytes) -> dict[str, Any]:
    """Pay out this pool's matured queue entries now (the chain also does it every block)."""
    me = codec.to_hex(signer.public_key)
    with NodeClient(url) as client:
        _pool(client, worker)
        receipt = client.call(signer, "staking", "withdraw", worker=worker)
        paid = [e for e in _tx_events(client, receipt, "Withdrawn") if e["who"] == me]
        current = _pool(client, worker)
        queue = _state(client, "queue", worker) or []
        return {
            "worker": codec.to_hex(worker),
            "withdrawn": sum(int(e["amount"]) for e in paid),
            "pending": [
                {
                    "shares": e["shares"],
                    "unlock_height": e["unlock_height"],
                    "value_now": _value(e["shares"], current),
                }
                for e in queue
                if e["who"] == me
            ],
            "tx_hash": receipt["tx_hash"],
            "block": receipt["block"],
        }


def pool(url: str, worker: bytes, me: bytes | None) -> dict[str, Any]:
    """The pool behind a worker: stake, shares, commission, the withdraw queue, reputation."""
    with NodeClient(url) as client:
        found = _pool(client, worker)
        queue = _state(client, "queue", worker) or []
        reputation = _state(client, "reputation", worker)
        min_stake = int(client.get("/state/system/param", key="min_stake")["value"])
        out: dict[str, Any] = {
            "worker": codec.to_hex(worker),
            "owner": found["owner"],
            "commission_ppm": int(found["commission_ppm"]),
            "stake": int(found["stake"]),
            "shares": int(found["shares"]),
            "share_price_ppm": int(found["stake"]) * 1_000_000 // int(found["shares"])
            if found["shares"]
            else None,
            "stopped": bool(found["stopped"]),
            "staked": not found["stopped"] and int(found["stake"]) >= min_stake,
            "min_stake": min_stake,
            "reputation": 500 if reputation is None else int(reputation),
            "queue": [
                {
                    "who": e["who"],
                    "shares": e["shares"],
                    "unlock_height": e["unlock_height"],
                    "value_now": _value(e["shares"], found),
                }
                for e in queue
            ],
            "your_shares": None,
            "your_value": None,
        }
        if me is not None:
            out.update(_mine(client, worker, me, found))
        return out


def rewards(url: str, address: bytes) -> dict[str, Any]:
    """Rewarded and Slashed events of a worker's pool, or of every pool `address` delegated to."""
    with NodeClient(url) as client:
        if _state(client, "pool", address) is not None:
            workers = [address]
        else:
            workers = [
                codec.from_hex(w, length=32, what="worker")
                for w in _state(client, "delegations", address) or []
            ]
        events: list[dict[str, Any]] = []
        start: int | None = 0
        pages = 0
        while workers and start is not None and pages < _HISTORY_PAGES:
            page = client.get(
                "/history/events",
                module="staking",
                names="Rewarded,Slashed",
                workers=",".join(codec.to_hex(w) for w in workers),
                **{"from": start},
            )
            events += [{"height": e["height"], "event": e["name"], **e["data"]} for e in page["events"]]
            start = page["next"]
            pages += 1
        rewarded = [e for e in events if e["event"] == "Rewarded"]
        slashed = [e for e in events if e["event"] == "Slashed"]
        return {
            "address": codec.to_hex(address),
            "workers": [codec.to_hex(w) for w in workers],
            "events": events,
            "rewarded": sum(int(e["reward"]) for e in rewarded),
            "commission": sum(int(e["commission"]) for e in rewarded),
            "slashed": sum(int(e["amount"]) for e in slashed),
        }
