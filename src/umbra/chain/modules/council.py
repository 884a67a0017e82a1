"""`council`: M-of-N governance. Members propose a call; once M members vote aye, the call runs
with the COUNCIL origin, which is the only way to reach privileged methods of other modules
(allowlists, policy, the gatekeeper set, chain parameters, treasury spends).
"""

from __future__ import annotations

from typing import Any

from umbra.chain.module import (
    BlockContext,
    CallContext,
    DispatchError,
    Module,
    ModuleError,
    Origin,
    StorageMap,
    StorageValue,
    call,
)
from umbra.chain.state import State
from umbra.chain.types import Call

__all__ = ["Council"]


class CouncilError(ModuleError):
    pass


class Council(Module):
    name = "council"
    events = frozenset({"Proposed", "Voted", "Executed", "Rejected", "Expired", "MembersSet"})
    Error = CouncilError

    members = StorageValue("members", [])
    threshold = StorageValue("threshold", 1)
    next_id = StorageValue("next_id", 0)
    proposals = StorageMap("proposal")

    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        config = config or {}
        members = sorted(config.get("members", []))
        threshold = config.get("threshold", max(1, len(members) // 2 + 1))
        self._check_membership(members, threshold)
        self.members.set(state, members)
        self.threshold.set(state, threshold)

    def _check_membership(self, members: list[bytes], threshold: int) -> None:
        self.ensure(
            all(isinstance(m, bytes) and len(m) == 32 for m in members),
            "bad_member",
            "members are 32-byte account ids",
        )
        self.ensure(len(set(members)) == len(members), "bad_member", "members must be distinct")
        self.ensure(
            not members or 1 <= threshold <= len(members),
            "bad_threshold",
            "threshold must be between 1 and the member count",
        )

    def _member(self, ctx: CallContext) -> bytes:
        who = ctx.signer()
        self.ensure(who in self.members.get(ctx.state), "not_member", "only council members may do this")
        return who

    @call()
    def propose(self, ctx: CallContext, module: str, method: str, args: dict[str, Any]) -> None:
        who = self._member(ctx)
        target = self.rt.lookup_call(module, method)
        self.ensure(target is not None, "unknown_call", f"no call {module}.{method}")
        self.ensure(
            target is not None and target.origin is Origin.COUNCIL,
            "not_privileged",
            f"{module}.{method} is not a council call",
        )
        problem = self.rt.check_call_args(Call(module, method, args))
        self.ensure(problem is None, "bad_args", f"proposal arguments: {problem}")
        pid = self.next_id.get(ctx.state)
        self.next_id.set(ctx.state, pid + 1)
        proposal = {
            "call": {"module": module, "method": method, "args": args},
            "proposer": who,
            "ayes": [],
            "nays": [],
            "created": ctx.height,
        }
        self.proposals.set(ctx.state, pid, proposal)
        self.emit(ctx, "Proposed", proposal=pid, proposer=who, module=module, method=method)
        self._vote(ctx, pid, who, True)

    @call()
    def vote(self, ctx: CallContext, proposal: int, aye: bool) -> None:
        who = self._member(ctx)
        self._vote(ctx, proposal, who, aye)

    def _vote(self, ctx: CallContext, pid: int, who: bytes, aye: bool) -> None:
        # Proposal ids are u64 storage keys: any other integer names no proposal.
        proposal = self.proposals.get(ctx.state, pid) if 0 <= pid < 1 << 64 else None
        if proposal is None:
            self.fail("unknown_proposal", f"no open proposal {pid}")
        self.ensure(
            who not in proposal["ayes"] and who not in proposal["nays"],
            "already_voted",
            "each member votes once",
        )
        proposal["ayes" if aye else "nays"].append(who)
        self.emit(ctx, "Voted", proposal=pid, who=who, aye=aye)
        members = self.members.get(ctx.state)
        threshold = self.threshold.get(ctx.state)
        if len(proposal["ayes"]) >= threshold:
            self.proposals.delete(ctx.state, pid)
            self._execute(ctx, pid, proposal)
        elif len(members) - len(proposal["nays"]) < threshold:
            self.proposals.delete(ctx.state, pid)
            self.emit(ctx, "Rejected", proposal=pid)
        else:
            self.proposals.set(ctx.state, pid, proposal)

    def _execute(self, ctx: CallContext, pid: int, proposal: dict[str, Any]) -> None:
        """Run the approved call atomically; its failure is recorded, not propagated."""
        spec = proposal["call"]
        council_ctx = CallContext(ctx.block, Origin.COUNCIL, None, ctx.tx_hash)
        ctx.state.checkpoint()
        try:
            self.rt.dispatch(council_ctx, Call(spec["module"], spec["method"], spec["args"]))
        except DispatchError as exc:
            ctx.state.rollback()
            self.emit(ctx, "Executed", proposal=pid, ok=False, error=exc.code, message=exc.message)
            return
        ctx.state.discard()
        self.emit(ctx, "Executed", proposal=pid, ok=True, error=None, message=None)

    @call(origin=Origin.COUNCIL)
    def set_members(self, ctx: CallContext, members: list[bytes], threshold: int) -> None:
        members = sorted(members)
        self._check_membership(members, threshold)
        self.ensure(len(members) >= 1, "bad_member", "the council needs at least one member")
        self.members.set(ctx.state, members)
        self.threshold.set(ctx.state, threshold)
        self.emit(ctx, "MembersSet", members=members, threshold=threshold)

    def on_finalize(self, block: BlockContext) -> None:
        ttl = int(self.rt.system.param(block.state, "proposal_ttl_blocks"))
        for key, proposal in list(self.proposals.items(block.state)):
            if block.height - proposal["created"] >= ttl:
                pid = int.from_bytes(key, "big")
                self.proposals.delete(block.state, pid)
                self.emit(block, "Expired", proposal=pid)
