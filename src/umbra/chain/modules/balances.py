"""`balances`: accounts, transfers, fees and genesis allocations.

An account is {free, reserved, staked}. There is no existential deposit: any amount >= 1 creates
an account. Supply changes only at genesis; every other movement is a transfer between accounts,
module accounts (treasury, contract escrow) included, so total supply is conserved.

Other modules use the `Currency` methods below (transfer, reserve, unreserve, stake moves); they
never touch this module's storage.
"""

from __future__ import annotations

from typing import Any

from umbra import codec
from umbra.chain.module import CallContext, Module, ModuleError, Origin, StorageMap, StorageValue, call
from umbra.chain.state import State

__all__ = ["TREASURY", "Balances", "module_account"]


def module_account(name: str) -> bytes:
    """A deterministic account id owned by a module (no private key exists for it)."""
    return codec.sha256(b"umbra/module-account/" + name.encode())


TREASURY = module_account("treasury")
_EMPTY = {"free": 0, "reserved": 0, "staked": 0}


class BalancesError(ModuleError):
    pass


def _amount(args: dict[str, Any]) -> int:
    value = args.get("amount", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Balances(Module):
    name = "balances"
    events = frozenset({"Transfer"})
    Error = BalancesError

    accounts = StorageMap("account")
    total_issuance = StorageValue("total_issuance", 0)

    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        total = 0
        for account, amount in sorted((config or {}).get("allocations", {}).items()):
            if not (
                isinstance(account, bytes) and len(account) == 32 and isinstance(amount, int) and amount > 0
            ):
                raise ValueError("genesis allocations map 32-byte accounts to positive amounts")
            self.accounts.set(state, account, {**_EMPTY, "free": amount})
            total += amount
        self.total_issuance.set(state, total)

    # -- Currency interface ----------------------------------------------------------------------
    def account(self, state: State, who: bytes) -> dict[str, int]:
        value: dict[str, int] = self.accounts.get(state, who, _EMPTY)
        return dict(value)

    def free(self, state: State, who: bytes) -> int:
        return self.account(state, who)["free"]

    def _put(self, state: State, who: bytes, acct: dict[str, int]) -> None:
        if acct["free"] == 0 and acct["reserved"] == 0 and acct["staked"] == 0:
            self.accounts.delete(state, who)
        else:
            self.accounts.set(state, who, acct)

    def _move(self, state: State, who: bytes, src: str, dst: str | None, amount: int) -> dict[str, int]:
        acct = self.account(state, who)
        self.ensure(amount >= 0, "bad_amount", "amounts are non-negative")
        self.ensure(
            acct[src] >= amount, "insufficient_balance", f"{src} balance {acct[src]} is below {amount}"
        )
        acct[src] -= amount
        if dst is not None:
            acct[dst] += amount
        self._put(state, who, acct)
        return acct

    def transfer_free(self, state: State, source: bytes, dest: bytes, amount: int) -> None:
        """Move `amount` from source's free to dest's free balance, or fail with nothing changed."""
        self._move(state, source, "free", None, amount)
        acct = self.account(state, dest)
        acct["free"] += amount
        self._put(state, dest, acct)

    def reserve(self, state: State, who: bytes, amount: int) -> None:
        self._move(state, who, "free", "reserved", amount)

    def unreserve(self, state: State, who: bytes, amount: int) -> None:
        self._move(state, who, "reserved", "free", amount)

    def pay_from_reserved(self, state: State, who: bytes, dest: bytes, amount: int) -> None:
        """Spend reserved funds (an escrow) to `dest`'s free balance."""
        self._move(state, who, "reserved", None, amount)
        acct = self.account(state, dest)
        acct["free"] += amount
        self._put(state, dest, acct)

    def stake(self, state: State, who: bytes, amount: int) -> None:
        self._move(state, who, "free", "staked", amount)

    def unstake(self, state: State, who: bytes, amount: int) -> None:
        self._move(state, who, "staked", "free", amount)

    def slash_staked(self, state: State, who: bytes, dest: bytes, amount: int) -> int:
        """Take up to `amount` of `who`'s stake to `dest`; returns what was actually taken."""
        taken = min(amount, self.account(state, who)["staked"])
        self._move(state, who, "staked", None, taken)
        acct = self.account(state, dest)
        acct["free"] += taken
        self._put(state, dest, acct)
        return taken

    def charge_fee(self, ctx: CallContext, who: bytes, fee: int) -> None:
        """Fees go to the treasury; the tx's ExtrinsicSuccess/Failed event records the amount."""
        self.transfer_free(ctx.state, who, TREASURY, fee)

    # -- calls -----------------------------------------------------------------------------------
    @call(spend=_amount)
    def transfer(self, ctx: CallContext, to: bytes, amount: int) -> None:
        sender = ctx.signer()
        self.ensure(len(to) == 32, "bad_account", "destination must be a 32-byte account id")
        self.ensure(amount >= 1, "bad_amount", "transfer amount must be at least 1")
        self.transfer_free(ctx.state, sender, to, amount)
        self.emit(ctx, "Transfer", source=sender, dest=to, amount=amount)

    @call(origin=Origin.COUNCIL)
    def treasury_spend(self, ctx: CallContext, to: bytes, amount: int) -> None:
        """Council-approved payment out of the treasury (fees and slashes accumulate there)."""
        self.ensure(len(to) == 32, "bad_account", "destination must be a 32-byte account id")
        self.ensure(amount >= 1, "bad_amount", "amount must be at least 1")
        self.transfer_free(ctx.state, TREASURY, to, amount)
        self.emit(ctx, "Transfer", source=TREASURY, dest=to, amount=amount)
