"""`keys`: the master key's public side, its handovers, contract keys and rotations.

Secrets never touch the chain: the chain records master public keys, HPKE ciphertexts addressed
to attested workers' ECDH keys, and contract public keys, each signed by the gatekeeper enclave
that made it. Only the operator of a registered gatekeeper may post them, and a handover is
refused for any worker that is not attested, is expired or is revoked.
"""

from __future__ import annotations

from typing import Any

from umbra import codec, crypto
from umbra.chain.module import CallContext, Module, ModuleError, Origin, StorageMap, StorageValue, call
from umbra.chain.state import State

__all__ = ["Keys"]

_MAX_CIPHERTEXT = 4096


class KeysError(ModuleError):
    pass


class Keys(Module):
    name = "keys"
    events = frozenset(
        {
            "MasterKeyPublished",
            "KeyHandedOver",
            "ContractKeyPublished",
            "RotationStarted",
            "GatekeeperOperatorsSet",
        }
    )
    Error = KeysError

    epoch = StorageValue("epoch", -1)  # -1 until the first gatekeeper publishes the master key
    pending_epoch = StorageValue("pending_epoch", None)  # set while a rotation waits for its key
    operators = StorageValue("gatekeeper_operators", [])
    gatekeepers = StorageValue("gatekeepers", [])  # worker ids that hold the master key
    masters = StorageMap("master")  # epoch -> {master_pk, gatekeeper}
    handovers = StorageMap("handover")  # worker || epoch -> {ciphertext, gatekeeper}
    contract_keys = StorageMap("contract_key")  # contract || epoch -> {...}

    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        operators = sorted((config or {}).get("gatekeeper_operators", []))
        if not all(isinstance(o, bytes) and len(o) == 32 for o in operators):
            raise ValueError("gatekeeper_operators are 32-byte account ids")
        self.operators.set(state, operators)

    # ---- interface -------------------------------------------------------------------------------
    def current_epoch(self, state: State) -> int:
        value: int = self.epoch.get(state)
        return value

    def holds_epoch(self, state: State, worker: bytes, epoch: int) -> bool:
        return self.handovers.contains(state, worker + epoch.to_bytes(8, "big")) or (
            worker in self.gatekeepers.get(state) and self.masters.contains(state, epoch)
        )

    def has_current_key(self, state: State, worker: bytes) -> bool:
        epoch = self.current_epoch(state)
        return epoch >= 0 and self.holds_epoch(state, worker, epoch)

    def contract_key(self, state: State, contract: bytes, epoch: int | None = None) -> dict[str, Any] | None:
        epoch = self.current_epoch(state) if epoch is None else epoch
        value: dict[str, Any] | None = self.contract_keys.get(state, contract + epoch.to_bytes(8, "big"))
        return value

    def start_rotation(self, ctx: CallContext) -> None:
        """Ask the gatekeepers for a new epoch (revocations and the council call this)."""
        if self.current_epoch(ctx.state) < 0 or self.pending_epoch.get(ctx.state) is not None:
            return
        nxt = self.current_epoch(ctx.state) + 1
        self.pending_epoch.set(ctx.state, nxt)
        self.emit(ctx, "RotationStarted", epoch=nxt)

    # ---- helpers -------------------------------------------------------------------------------
    def _gatekeeper(self, ctx: CallContext, gatekeeper: bytes, *, must_hold: bool = True) -> dict[str, Any]:
        """The gatekeeper's registry record, after checking the sender is its operator."""
        operator = ctx.signer()
        record = self.rt.registry.worker(ctx.state, gatekeeper)
        self.ensure(record is not None, "unknown_gatekeeper", "no such registered worker")
        assert record is not None
        self.ensure(
            record["operator"] == operator, "not_operator", "only the gatekeeper's operator may post for it"
        )
        self.ensure(
            operator in self.operators.get(ctx.state),
            "not_gatekeeper_operator",
            "the worker's operator is not a gatekeeper operator elected by the council",
        )
        self.ensure(
            record["role"] == "gatekeeper", "not_gatekeeper", "the worker is not registered as a gatekeeper"
        )
        self.ensure(
            self.rt.registry.is_attested(ctx.state, gatekeeper, ctx.time_ms),
            "gatekeeper_not_attested",
            "the gatekeeper is not attested, is expired or is revoked",
        )
        if must_hold:
            self.ensure(
                gatekeeper in self.gatekeepers.get(ctx.state),
                "not_gatekeeper",
                "the worker holds no master key",
            )
        return record

    def _check_signature(self, domain: str, body: dict[str, Any], signature: bytes, signer: bytes) -> None:
        self.ensure(
            crypto.verify(domain, body, signature, signer),
            "bad_signature",
            f"{domain} signature does not verify",
        )

    # ---- calls ---------------------------------------------------------------------------------
    @call()
    def init_master(self, ctx: CallContext, gatekeeper: bytes, master_pk: bytes, signature: bytes) -> None:
        self._gatekeeper(ctx, gatekeeper, must_hold=False)
        self.ensure(
            ctx.signer() in self.operators.get(ctx.state),
            "not_gatekeeper_operator",
            "sender is not a gatekeeper operator",
        )
        self.ensure(self.current_epoch(ctx.state) < 0, "master_exists", "the master key is already published")
        self.ensure(len(master_pk) == 32, "bad_key", "master_pk is a 32-byte X25519 public key")
        body = {"chain_id": self.rt.chain_id, "epoch": 0, "master_pk": master_pk}
        self._check_signature("umbra/master-key/v1", body, signature, gatekeeper)
        self.masters.set(ctx.state, 0, {"master_pk": master_pk, "gatekeeper": gatekeeper})
        self.epoch.set(ctx.state, 0)
        self.gatekeepers.set(ctx.state, [gatekeeper])
        self.emit(ctx, "MasterKeyPublished", epoch=0, master_pk=master_pk, gatekeeper=gatekeeper)

    @call()
    def publish_master(
        self, ctx: CallContext, gatekeeper: bytes, epoch: int, master_pk: bytes, signature: bytes
    ) -> None:
        self._gatekeeper(ctx, gatekeeper)
        self.ensure(
            self.pending_epoch.get(ctx.state) == epoch,
            "no_rotation",
            f"no rotation to epoch {epoch} is pending",
        )
        self.ensure(len(master_pk) == 32, "bad_key", "master_pk is a 32-byte X25519 public key")
        body = {"chain_id": self.rt.chain_id, "epoch": epoch, "master_pk": master_pk}
        self._check_signature("umbra/master-key/v1", body, signature, gatekeeper)
        self.masters.set(ctx.state, epoch, {"master_pk": master_pk, "gatekeeper": gatekeeper})
        self.epoch.set(ctx.state, epoch)
        self.pending_epoch.set(ctx.state, None)
        # Only the gatekeeper that made the new key holds it; others receive it by handover.
        self.gatekeepers.set(ctx.state, [gatekeeper])
        self.emit(ctx, "MasterKeyPublished", epoch=epoch, master_pk=master_pk, gatekeeper=gatekeeper)

    @call()
    def handover(
        self,
        ctx: CallContext,
        gatekeeper: bytes,
        worker: bytes,
        epoch: int,
        ciphertext: bytes,
        signature: bytes,
    ) -> None:
        self._gatekeeper(ctx, gatekeeper)
        self.ensure(
            self.masters.contains(ctx.state, epoch), "unknown_epoch", f"epoch {epoch} has no master key"
        )
        self.ensure(
            0 < len(ciphertext) <= _MAX_CIPHERTEXT, "bad_ciphertext", "ciphertext is empty or too large"
        )
        target = self.rt.registry.worker(ctx.state, worker)
        self.ensure(target is not None, "unknown_worker", "no such worker")
        self.ensure(
            self.rt.registry.is_attested(ctx.state, worker, ctx.time_ms),
            "worker_not_attested",
            "no key goes to an unattested, expired or revoked worker",
        )
        key = worker + epoch.to_bytes(8, "big")
        self.ensure(
            not self.handovers.contains(ctx.state, key),
            "already_handed_over",
            "this worker already holds the epoch",
        )
        body = {
            "chain_id": self.rt.chain_id,
            "epoch": epoch,
            "worker": worker,
            "ciphertext_hash": codec.sha256(ciphertext),
        }
        self._check_signature("umbra/handover/v1", body, signature, gatekeeper)
        self.handovers.set(ctx.state, key, {"ciphertext": ciphertext, "gatekeeper": gatekeeper})
        assert target is not None
        # Only an elected operator's gatekeeper joins the set; anyone may register a worker with
        # role "gatekeeper", and gatekeepers hand the key to every attested worker.
        if (
            target["role"] == "gatekeeper"
            and target["operator"] in self.operators.get(ctx.state)
            and epoch == self.current_epoch(ctx.state)
        ):
            members = self.gatekeepers.get(ctx.state)
            if worker not in members:
                self.gatekeepers.set(ctx.state, [*members, worker])
        self.emit(ctx, "KeyHandedOver", gatekeeper=gatekeeper, worker=worker, epoch=epoch)

    @call()
    def publish_contract_key(
        self,
        ctx: CallContext,
        gatekeeper: bytes,
        contract: bytes,
        epoch: int,
        ecdh_pk: bytes,
        sign_pk: bytes,
        evm_address: bytes,
        signature: bytes,
    ) -> None:
        self._gatekeeper(ctx, gatekeeper)
        self.ensure(self.rt.contracts.exists(ctx.state, contract), "unknown_contract", "no such contract")
        self.ensure(
            self.masters.contains(ctx.state, epoch), "unknown_epoch", f"epoch {epoch} has no master key"
        )
        self.ensure(
            len(ecdh_pk) == 32 and len(sign_pk) == 32 and len(evm_address) == 20, "bad_key", "key sizes"
        )
        key = contract + epoch.to_bytes(8, "big")
        self.ensure(
            not self.contract_keys.contains(ctx.state, key), "already_published", "key already published"
        )
        body = {
            "chain_id": self.rt.chain_id,
            "contract": contract,
            "epoch": epoch,
            "ecdh_pk": ecdh_pk,
            "sign_pk": sign_pk,
            "evm_address": evm_address,
        }
        self._check_signature("umbra/contract-key/v1", body, signature, gatekeeper)
        self.contract_keys.set(ctx.state, key, {**body, "gatekeeper": gatekeeper, "signature": signature})
        self.emit(
            ctx,
            "ContractKeyPublished",
            contract=contract,
            epoch=epoch,
            ecdh_pk=ecdh_pk,
            sign_pk=sign_pk,
            evm_address=evm_address,
        )

    @call(origin=Origin.COUNCIL)
    def rotate(self, ctx: CallContext) -> None:
        self.ensure(self.current_epoch(ctx.state) >= 0, "no_master", "there is no master key to rotate yet")
        self.ensure(
            self.pending_epoch.get(ctx.state) is None, "rotation_pending", "a rotation is already pending"
        )
        self.start_rotation(ctx)

    @call(origin=Origin.COUNCIL)
    def set_gatekeeper_operators(self, ctx: CallContext, operators: list[bytes]) -> None:
        self.ensure(all(len(o) == 32 for o in operators), "bad_account", "operators are 32-byte account ids")
        self.operators.set(ctx.state, sorted(operators))
        self.emit(ctx, "GatekeeperOperatorsSet", operators=sorted(operators))
