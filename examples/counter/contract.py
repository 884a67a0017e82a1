"""The Counter of INTERFACES.md: a confidential counter anyone can add to."""

from umbra.contract import Contract, command, query


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]

    @query
    def get(self, ctx):
        return {"n": self.state["n"], "asked_by": ctx.caller}
