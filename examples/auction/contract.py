"""A sealed-bid batch auction: orders stay encrypted until the window closes, then all of them
clear at once, at one uniform price, inside the enclave.

Nobody can front-run or back-run an order they cannot read, and since every order in the batch
trades at the same price, the order in which orders arrived cannot change anything: the price
and the fills are computed from the set of orders, never from their sequence.

The traded asset is a unit ledger kept in this contract's (encrypted) state; the owner sets the
starting holdings at deploy. Payment is the chain's native currency: bidders fund their bids
with `value`, and at clearing the contract pays each seller, refunds each bidder's unused funds
(`ctx.transfer`), and moves the units.
"""

from umbra.contract import Contract, command, query


def _clearing_price(bids, asks):
    """(price, volume): the price that trades the most units; ties go to the smaller imbalance
    between demand and supply, then to the middle of the tied range. (None, 0) if nothing crosses."""
    best, tied = None, []
    for price in sorted({o["price"] for o in bids + asks}):
        demand = sum(o["qty"] for o in bids if o["price"] >= price)
        supply = sum(o["qty"] for o in asks if o["price"] <= price)
        key = (min(demand, supply), -abs(demand - supply))
        if best is None or key > best:
            best, tied = key, [price]
        elif key == best:
            tied.append(price)
    if best is None or best[0] == 0:
        return None, 0
    price = (tied[0] + tied[-1]) // 2
    demand = sum(o["qty"] for o in bids if o["price"] >= price)
    supply = sum(o["qty"] for o in asks if o["price"] <= price)
    return price, min(demand, supply)


def _allocate(orders, volume, best_first):
    """Fill `volume` units: better prices first; orders at the same price share pro rata (largest
    remainder), so that neither arrival order nor position in the list matters."""
    for order in orders:
        order["fill"] = 0
    left = volume
    for price in sorted({o["price"] for o in orders}, reverse=best_first):
        level = sorted(
            (o for o in orders if o["price"] == price), key=lambda o: (o["trader"], o["qty"], o["ref"])
        )
        size = sum(o["qty"] for o in level)
        if size <= left:
            for order in level:
                order["fill"] = order["qty"]
            left -= size
            continue
        shares = [(left * o["qty"] // size, left * o["qty"] % size, o) for o in level]
        for share, _, order in shares:
            order["fill"] = share
        extra = left - sum(s[0] for s in shares)
        for _, _, order in sorted(shares, key=lambda s: -s[1])[:extra]:  # stable: ties keep level order
            order["fill"] += 1
        return


class BatchAuction(Contract):
    def init(self, ctx, holdings, min_orders=2, close_height=None, asset="units"):
        self.state["owner"] = ctx.caller
        self.state["asset"] = asset
        self.state["holdings"] = dict(holdings)
        self.state["min_orders"] = min_orders
        self.state["close_height"] = close_height
        self.state["orders"] = []
        self.state["funds"] = {}  # trader -> native currency paid in with `value`
        self.state["result"] = None

    def _window_over(self, ctx):
        return self.state["close_height"] is not None and ctx.height >= self.state["close_height"]

    @command
    def order(self, ctx, side, price, qty, ref=""):
        """Place a sealed order. A bid must be covered by the funds this trader has paid in."""
        if self.state["result"] is not None or self._window_over(ctx):
            raise ValueError("the order window has closed")
        if side not in ("buy", "sell"):
            raise ValueError("side is 'buy' or 'sell'")
        if type(price) is not int or type(qty) is not int or price <= 0 or qty <= 0:
            raise ValueError("price and qty are positive ints")
        trader = ctx.caller
        funds = self.state["funds"]
        funds[trader] = funds.get(trader, 0) + ctx.value
        mine = [o for o in self.state["orders"] if o["trader"] == trader and o["side"] == side]
        if side == "buy" and sum(o["price"] * o["qty"] for o in mine) + price * qty > funds[trader]:
            raise ValueError("your bids would exceed your funds: send more with value")
        if side == "sell" and sum(o["qty"] for o in mine) + qty > self.state["holdings"].get(trader, 0):
            raise ValueError(f"you cannot offer more {self.state['asset']} than you hold")
        self.state["orders"].append(
            {"trader": trader, "side": side, "price": price, "qty": qty, "ref": str(ref), "fill": None}
        )
        return {"orders": len(mine) + 1, "funds": funds[trader]}

    @command
    def close(self, ctx):
        """Close the window and clear. The owner may close once `min_orders` are in; anyone may
        once `close_height` is reached."""
        if self.state["result"] is not None:
            raise ValueError("the auction has already cleared")
        if not self._window_over(ctx):
            if ctx.caller != self.state["owner"]:
                raise PermissionError("only the owner may close the window before close_height")
            if len(self.state["orders"]) < self.state["min_orders"]:
                raise ValueError(f"the owner may close only after {self.state['min_orders']} orders")
        orders = self.state["orders"]
        bids = [o for o in orders if o["side"] == "buy"]
        asks = [o for o in orders if o["side"] == "sell"]
        price, volume = _clearing_price(bids, asks)
        eligible_bids = [o for o in bids if price is not None and o["price"] >= price]
        eligible_asks = [o for o in asks if price is not None and o["price"] <= price]
        for order in orders:
            order["fill"] = 0
        _allocate(eligible_bids, volume, best_first=True)
        _allocate(eligible_asks, volume, best_first=False)

        payout = dict(self.state["funds"])  # every trader gets back their funds, less what they buy
        holdings = self.state["holdings"]
        for order in orders:
            if order["fill"]:
                sign = 1 if order["side"] == "buy" else -1
                payout[order["trader"]] = payout.get(order["trader"], 0) - sign * price * order["fill"]
                holdings[order["trader"]] = holdings.get(order["trader"], 0) + sign * order["fill"]
        for trader in sorted(payout):
            if payout[trader] > 0:
                ctx.transfer(trader, payout[trader])
        self.state["funds"] = {}
        self.state["result"] = {"price": price, "volume": volume}
        ctx.emit("Cleared", price=price, volume=volume)
        return self.state["result"]

    @query
    def result(self, ctx):
        """The clearing price and volume: public once the auction has cleared, nothing before."""
        if self.state["result"] is None:
            raise LookupError("the auction has not cleared yet")
        return self.state["result"]

    @query
    def orders(self, ctx, trader=None):
        """Your own orders, each with its fill once the auction has cleared."""
        if trader not in (None, ctx.caller):
            raise PermissionError("orders are sealed: each trader sees only their own")
        return [
            {k: o[k] for k in ("side", "price", "qty", "ref", "fill")}
            for o in self.state["orders"]
            if o["trader"] == ctx.caller
        ]

    @query
    def account(self, ctx):
        """Your own holdings of the asset and the funds you have paid in (until clearing)."""
        return {
            "holdings": self.state["holdings"].get(ctx.caller, 0),
            "funds": self.state["funds"].get(ctx.caller, 0),
        }
