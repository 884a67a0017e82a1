"""A private key-value vault with per-caller access control.

Each entry belongs to the account that first wrote it. Only its owner may overwrite it, grant or
revoke read access; only the owner and the readers it granted may read it. `ctx.caller` comes
from the signed request (the command's tx, or the query's signature inside the seal), so no
caller can claim to be someone else.
"""

from umbra.contract import Contract, command, query


class Vault(Contract):
    def init(self, ctx):
        self.state["entries"] = {}

    def _entry(self, name):
        entry = self.state["entries"].get(name)
        if entry is None:
            raise KeyError(f"no entry named {name!r}")
        return entry

    def _owned(self, ctx, name):
        entry = self._entry(name)
        if entry["owner"] != ctx.caller:
            raise PermissionError(f"only the owner of {name!r} may do this")
        return entry

    @command
    def put(self, ctx, name, value):
        entry = self.state["entries"].get(name)
        if entry is not None and entry["owner"] != ctx.caller:
            raise PermissionError(f"{name!r} belongs to another account")
        readers = entry["readers"] if entry is not None else []
        self.state["entries"][name] = {"owner": ctx.caller, "value": value, "readers": readers}
        return len(self.state["entries"])

    @command
    def grant(self, ctx, name, reader):
        entry = self._owned(ctx, name)
        if reader not in entry["readers"]:
            entry["readers"].append(reader)
        return sorted(entry["readers"])

    @command
    def revoke(self, ctx, name, reader):
        entry = self._owned(ctx, name)
        entry["readers"] = [r for r in entry["readers"] if r != reader]
        return sorted(entry["readers"])

    @query
    def get(self, ctx, name):
        entry = self._entry(name)
        if ctx.caller != entry["owner"] and ctx.caller not in entry["readers"]:
            raise PermissionError(f"not allowed to read {name!r}")
        return entry["value"]

    @query
    def readable(self, ctx):
        return sorted(
            name
            for name, entry in self.state["entries"].items()
            if ctx.caller == entry["owner"] or ctx.caller in entry["readers"]
        )
