"""A data union: members pool records under consent terms; analysts pay for aggregate statistics
and the revenue goes to the members, on chain.

Each record carries the purposes its member consented to. An analysis names its purpose, uses
only records that consented to it, and returns one aggregate (count, sum or mean of a field)
over those that match a filter, and only if at least `k` records match: no single record, and no
group small enough to single someone out, ever leaves the enclave. Fields listed as identifiers
(such as a name) can be neither filtered on nor aggregated. The price of an analysis is paid with
`value` and split at once among the members whose records consented to that purpose, pro rata
by how many such records each contributed (`ctx.transfer`).
"""

from umbra.contract import Contract, command, fixed, query

STATS = ("count", "sum", "mean")


def _matches(data, where):
    for name, want in where.items():
        have = data.get(name)
        if isinstance(want, list):  # [low, high], inclusive
            if type(have) is not int or not want[0] <= have <= want[1]:
                return False
        elif have != want:
            return False
    return True


def _split(amount, weights):
    """amount split pro rata by integer weights; the units left by rounding down go to the largest
    remainders (ties by member id), so exactly `amount` is paid."""
    total = sum(weights.values())
    shares = {m: amount * w // total for m, w in weights.items()}
    left = amount - sum(shares.values())
    for m in sorted(weights, key=lambda m: (-(amount * weights[m] % total), m))[:left]:
        shares[m] += 1
    return shares


class DataUnion(Contract):
    def init(self, ctx, k=5, price=1000, identifiers=()):
        if k < 2:
            raise ValueError("k must be at least 2")
        self.state["terms"] = {"k": k, "price": price, "identifiers": sorted(identifiers)}
        self.state["records"] = {}  # member -> [{"data", "purposes"}]
        self.state["earned"] = {}  # member -> total revenue paid out
        self.state["analyses"] = 0

    @command
    def contribute(self, ctx, records, purposes):
        """Add records that may be used only in aggregates for these purposes."""
        if not purposes or not all(isinstance(p, str) for p in purposes):
            raise ValueError("consent names at least one purpose")
        for data in records:
            if not isinstance(data, dict) or not all(type(v) in (int, str, bool) for v in data.values()):
                raise ValueError("a record is a flat map of ints, strings and booleans")
        mine = self.state["records"].setdefault(ctx.caller, [])
        mine += [{"data": data, "purposes": sorted(set(purposes))} for data in records]
        return {"records": len(mine)}

    @command
    def revoke(self, ctx):
        """Withdraw consent: delete all of your records."""
        removed = self.state["records"].pop(ctx.caller, [])
        return {"removed": len(removed)}

    @command
    def analyze(self, ctx, purpose, stat, field=None, where=None):
        """Paid with `value`: one aggregate over consenting records matching `where`
        ({field: value} or {field: [low, high]})."""
        terms, where = self.state["terms"], where or {}
        if ctx.value != terms["price"]:
            raise ValueError(f"an analysis costs exactly {terms['price']}: send it as value")
        if stat not in STATS or (stat != "count" and field is None):
            raise ValueError(f"stat is one of {', '.join(STATS)}; sum and mean need a field")
        if any(name in terms["identifiers"] for name in [*where, field]):
            raise PermissionError("identifier fields can be neither filtered on nor aggregated")
        consenting = {
            member: [r["data"] for r in records if purpose in r["purposes"]]
            for member, records in self.state["records"].items()
        }
        matched = [data for records in consenting.values() for data in records if _matches(data, where)]
        if len(matched) < terms["k"]:
            raise ValueError(f"refused: fewer than k={terms['k']} consenting records match")
        if stat == "count":
            value = len(matched)
        else:
            numbers = [data.get(field) for data in matched]
            if not all(type(v) is int for v in numbers):
                raise ValueError("the field is not a number in every matching record")
            value = sum(numbers) if stat == "sum" else fixed.round_div(100 * sum(numbers), len(numbers)) / 100

        weights = {member: len(records) for member, records in consenting.items() if records}
        for member, share in sorted(_split(ctx.value, weights).items()):
            if share:
                ctx.transfer(member, share)
                self.state["earned"][member] = self.state["earned"].get(member, 0) + share
        self.state["analyses"] += 1
        ctx.emit("AnalysisPaid", analysis=self.state["analyses"], paid=ctx.value, members=len(weights))
        return {"stat": stat, "field": field, "records": len(matched), "value": value}

    @query
    def terms(self, ctx):
        return self.state["terms"]

    @query
    def records(self, ctx, member=None):
        """Your own records and their consent. Nobody reads another member's records."""
        if member not in (None, ctx.caller):
            raise PermissionError(
                "records are private: members read only their own, analysts only aggregates"
            )
        return self.state["records"].get(ctx.caller, [])

    @query
    def earnings(self, ctx):
        """What your records have earned so far."""
        return self.state["earned"].get(ctx.caller, 0)
