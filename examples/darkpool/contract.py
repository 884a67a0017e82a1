"""A dark pool: a limit order book that lives only inside the enclave.

Orders match continuously with price-time priority (best price first, then earliest), and each
match executes at the midpoint of the two limit prices, so neither side gives away its limit.
Nobody sees the book: a trader reads only their own orders and fills, and never learns who the
counterparty was. The public sees deposits and the operator's periodic settlements: one
`ctx.transfer` per trader (the net of all their fills since the last settlement) and one event
with counts only, never a price or an order.

The traded asset is a unit ledger in this contract's (encrypted) state, with starting holdings
set at deploy; cash is the chain's native currency, paid in with `deposit` (`value`).
"""

from umbra.contract import Contract, command, query


class DarkPool(Contract):
    def init(self, ctx, holdings, asset="units"):
        self.state["operator"] = ctx.caller
        self.state["asset"] = asset
        self.state["units"] = dict(holdings)  # trader -> free units
        self.state["cash"] = {}  # trader -> free cash held here, paid out at the next settlement
        self.state["book"] = []  # resting orders, each with its locked cash or units
        self.state["fills"] = {}  # trader -> their side of each fill
        self.state["seq"] = 0
        self.state["unsettled_fills"] = 0
        self.state["batch"] = 0

    def _add(self, ledger, trader, amount):
        self.state[ledger][trader] = self.state[ledger].get(trader, 0) + amount

    def _fill(self, trader, side, ref, price, qty):
        self.state["fills"].setdefault(trader, []).append(
            {"side": side, "ref": ref, "price": price, "qty": qty}
        )

    @command
    def deposit(self, ctx):
        """Pay cash in (with `value`) to back buy orders."""
        if ctx.value <= 0:
            raise ValueError("send the deposit as value")
        self._add("cash", ctx.caller, ctx.value)
        return self.account(ctx)

    @command
    def order(self, ctx, side, price, qty, ref=""):
        """Place a limit order; it matches at once against the book and rests for the remainder."""
        if side not in ("buy", "sell"):
            raise ValueError("side is 'buy' or 'sell'")
        if type(price) is not int or type(qty) is not int or price <= 0 or qty <= 0:
            raise ValueError("price and qty are positive ints")
        me, ref = ctx.caller, str(ref)
        ledger, need = ("cash", price * qty) if side == "buy" else ("units", qty)
        if self.state[ledger].get(me, 0) < need:
            raise ValueError(f"not enough free {ledger} for this order")
        self._add(ledger, me, -need)  # locked until it fills or is cancelled

        opposite = [o for o in self.state["book"] if o["side"] != side]
        if side == "buy":
            crossing = sorted(
                (o for o in opposite if o["price"] <= price), key=lambda o: (o["price"], o["seq"])
            )
        else:
            crossing = sorted(
                (o for o in opposite if o["price"] >= price), key=lambda o: (-o["price"], o["seq"])
            )
        left = qty
        for rest in crossing:
            if left == 0:
                break
            q = min(left, rest["left"])
            buy, sell = (price, rest["price"]) if side == "buy" else (rest["price"], price)
            mid = (buy + sell) // 2
            buyer, seller = (me, rest["trader"]) if side == "buy" else (rest["trader"], me)
            self._add("units", buyer, q)
            self._add("cash", buyer, (buy - mid) * q)  # the buyer locked its limit: refund the difference
            self._add("cash", seller, mid * q)
            self._fill(me, side, ref, mid, q)
            self._fill(rest["trader"], rest["side"], rest["ref"], mid, q)
            rest["left"] -= q
            left -= q
            self.state["unsettled_fills"] += 1
        self.state["book"] = [o for o in self.state["book"] if o["left"] > 0]
        if left:
            self.state["seq"] += 1
            self.state["book"].append(
                {
                    "seq": self.state["seq"],
                    "trader": me,
                    "side": side,
                    "price": price,
                    "left": left,
                    "ref": ref,
                }
            )
        return {"filled": qty - left, "resting": left}

    @command
    def cancel(self, ctx, ref):
        """Cancel your resting orders with this ref; their locked cash or units come back."""
        mine = [o for o in self.state["book"] if o["trader"] == ctx.caller and o["ref"] == ref]
        if not mine:
            raise LookupError("you have no resting order with that ref")
        for o in mine:
            if o["side"] == "buy":
                self._add("cash", o["trader"], o["price"] * o["left"])
            else:
                self._add("units", o["trader"], o["left"])
        self.state["book"] = [o for o in self.state["book"] if o not in mine]
        return self.account(ctx)

    @command
    def settle(self, ctx):
        """Operator: pay every trader their free cash. Public: one transfer per trader, and counts."""
        if ctx.caller != self.state["operator"]:
            raise PermissionError("only the operator settles")
        cash = self.state["cash"]
        payees = sorted(t for t in cash if cash[t] > 0)
        for trader in payees:
            ctx.transfer(trader, cash[trader])
            cash[trader] = 0
        self.state["batch"] += 1
        summary = {
            "batch": self.state["batch"],
            "fills": self.state["unsettled_fills"],
            "payouts": len(payees),
        }
        self.state["unsettled_fills"] = 0
        ctx.emit("Settled", **summary)
        return summary

    def _own(self, ctx, trader):
        if trader not in (None, ctx.caller):
            raise PermissionError("the pool is dark: each trader sees only their own orders and fills")
        return ctx.caller

    @query
    def fills(self, ctx, trader=None):
        """Your side of each of your fills: price and quantity, never the counterparty."""
        return self.state["fills"].get(self._own(ctx, trader), [])

    @query
    def orders(self, ctx, trader=None):
        """Your resting orders."""
        me = self._own(ctx, trader)
        return [
            {k: o[k] for k in ("side", "price", "left", "ref")}
            for o in self.state["book"]
            if o["trader"] == me
        ]

    @query
    def account(self, ctx):
        """Your free cash (paid out at the next settlement) and free units."""
        return {
            "cash": self.state["cash"].get(ctx.caller, 0),
            "units": self.state["units"].get(ctx.caller, 0),
        }
