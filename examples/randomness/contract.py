"""A verifiable lottery: players buy tickets during a round, and one draw per round pays the pot.

The draw uses `ctx.random`, whose seed the enclave derives from the job id and the contract's
commit key, a key that only enclave cores hold. Nobody can know the draw before its job runs,
and nobody can re-roll it:
- the tickets are fixed first: a round takes tickets until its closing height, and the draw
  may only run after that (commit, then reveal);
- one draw per round: `draw(round)` closes that round for good, so a second request for the
  same round (a new job, with a fresh seed) is refused instead of drawing again;
- a worker that withholds a result it dislikes gains nothing: the job moves to another worker
  with the same job id, so the same seed, so the same draw.
"""

from umbra.contract import Contract, command, query


class Lottery(Contract):
    def init(self, ctx, ticket_price, round_blocks=20):
        if not (isinstance(ticket_price, int) and ticket_price > 0):
            raise ValueError("ticket_price must be a positive int")
        if not (isinstance(round_blocks, int) and round_blocks > 0):
            raise ValueError("round_blocks must be a positive int")
        self.state["price"] = ticket_price
        self.state["round_blocks"] = round_blocks
        self.state["history"] = []
        self._open(ctx, 1)

    def _open(self, ctx, number):
        closes_at = ctx.height + self.state["round_blocks"]
        self.state["round"] = {"number": number, "closes_at": closes_at, "tickets": [], "notes": {}}

    @command
    def join(self, ctx, note=""):
        """Buy `value / price` tickets in the open round; `note` stays private to its author."""
        round_ = self.state["round"]
        price = self.state["price"]
        if ctx.height >= round_["closes_at"]:
            raise ValueError(f"round {round_['number']} closed at height {round_['closes_at']}")
        if ctx.value <= 0 or ctx.value % price:
            raise ValueError(f"send a positive multiple of the ticket price {price} as value")
        round_["tickets"] += [ctx.caller] * (ctx.value // price)
        round_["notes"].setdefault(ctx.caller, []).append(str(note))
        return {"round": round_["number"], "tickets": round_["tickets"].count(ctx.caller)}

    @command
    def draw(self, ctx, round):
        """Draw the winner of `round` once it has closed, pay it the pot, and open the next round."""
        round_ = self.state["round"]
        if round != round_["number"]:
            raise ValueError(f"round {round} cannot be drawn: the open round is {round_['number']}")
        if ctx.height < round_["closes_at"]:
            raise ValueError(f"round {round} takes tickets until height {round_['closes_at']}")
        tickets = round_["tickets"]
        seed = ctx.random(32)
        pot = len(tickets) * self.state["price"]
        result = {"round": round, "tickets": len(tickets), "pot": pot, "draw": "0x" + seed.hex()}
        if tickets:
            index = int.from_bytes(seed, "big") % len(tickets)  # bias below 2**-200
            result.update(index=index, winner=tickets[index])
            ctx.transfer(tickets[index], pot)
        else:
            result.update(index=None, winner=None)
        result["job"] = ctx.job
        self.state["history"].append(result)
        ctx.emit("Drawn", **result)
        self._open(ctx, round + 1)
        return result

    @query
    def status(self, ctx):
        round_ = self.state["round"]
        return {
            "round": round_["number"],
            "closes_at": round_["closes_at"],
            "tickets": len(round_["tickets"]),
            "price": self.state["price"],
        }

    @query
    def my_tickets(self, ctx):
        round_ = self.state["round"]
        mine = round_["tickets"].count(ctx.caller)
        return {"round": round_["number"], "tickets": mine, "notes": round_["notes"].get(ctx.caller, [])}

    @query
    def history(self, ctx):
        return self.state["history"]
