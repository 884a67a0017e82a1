"""Federated averaging: parties train locally and send their model updates sealed to this contract;
only the weighted average of a round ever leaves the enclave.

Updates are fixed-point integer vectors (each party quantizes its float weights with
`umbra.contract.fixed` before sending), so the average is exact integer arithmetic and replicas on
different hardware agree on it bit for bit. A round closes once at least `min_participants`
registered parties have submitted; closing averages the updates weighted by each party's sample
count, keeps only that average, and erases the individual updates and sample counts.
"""

from umbra.contract import Contract, command, fixed, query


class FederatedAveraging(Contract):
    def init(self, ctx, parties, dim, min_participants=3):
        if min_participants < 3:
            raise ValueError(
                "min_participants must be at least 3: with 2, each party could subtract its own update"
            )
        if len(set(parties)) < min_participants:
            raise ValueError("fewer registered parties than min_participants")
        self.state["owner"] = ctx.caller
        self.state["parties"] = sorted(set(parties))
        self.state["dim"] = dim
        self.state["min_participants"] = min_participants
        self.state["round"] = 1
        self.state["updates"] = {}  # party -> {"weights", "samples", "tag"}: erased when the round closes
        self.state["models"] = []  # one released aggregate per closed round

    @command
    def submit(self, ctx, weights, samples, tag=""):
        """Send (or replace) this party's update for the open round."""
        if ctx.caller not in self.state["parties"]:
            raise PermissionError("only registered parties may submit updates")
        if len(weights) != self.state["dim"] or not all(type(w) is int for w in weights):
            raise ValueError(f"weights must be {self.state['dim']} fixed-point ints")
        if type(samples) is not int or samples <= 0:
            raise ValueError("samples must be a positive int")
        self.state["updates"][ctx.caller] = {"weights": weights, "samples": samples, "tag": str(tag)}
        return {"round": self.state["round"], "submitted": len(self.state["updates"])}

    @command
    def aggregate(self, ctx):
        """Close the round: FedAvg weighted by sample count. Needs min_participants updates."""
        if ctx.caller != self.state["owner"] and ctx.caller not in self.state["parties"]:
            raise PermissionError("only the owner or a party may close a round")
        updates = self.state["updates"]
        if len(updates) < self.state["min_participants"]:
            raise ValueError(
                f"round {self.state['round']} needs at least {self.state['min_participants']} updates to close"
            )
        parties = sorted(updates)
        weights = fixed.weighted_mean_vectors(
            [updates[p]["weights"] for p in parties], [updates[p]["samples"] for p in parties]
        )
        model = {"round": self.state["round"], "participants": len(parties), "weights": weights}
        self.state["models"].append(model)
        self.state["updates"] = {}
        self.state["round"] += 1
        ctx.emit("RoundClosed", round=model["round"], participants=model["participants"])
        return model

    @query
    def model(self, ctx, round=None):
        """The aggregate of a closed round (default: the latest). Nothing before a round closes."""
        models = self.state["models"]
        if not models:
            raise LookupError("no round has closed yet: only aggregates of closed rounds are released")
        if round is None:
            return models[-1]
        for model in models:
            if model["round"] == round:
                return model
        raise LookupError(f"round {round} has not closed")

    @query
    def update(self, ctx, party=None):
        """A party's own pending update. Nobody, the owner included, may read another party's."""
        party = ctx.caller if party is None else party
        if party != ctx.caller:
            raise PermissionError("individual updates are private: a party may read only its own")
        return self.state["updates"].get(party)

    @query
    def status(self, ctx):
        return {
            "round": self.state["round"],
            "submitted": len(self.state["updates"]),
            "min_participants": self.state["min_participants"],
            "dim": self.state["dim"],
        }
