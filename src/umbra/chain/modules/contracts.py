"""`contracts`: public code, encrypted state, owner secrets and blobs.

Code is public (anyone can audit what runs on their data); state, secrets and inputs are
ciphertext that only enclave cores holding the contract's keys can open. The chain keeps the
state's hash and version, so a result built on stale state is refused at settlement.
"""

from __future__ import annotations

from typing import Any

from umbra import codec
from umbra.chain.module import CallContext, Module, ModuleError, StorageMap, call
from umbra.chain.modules.balances import module_account
from umbra.chain.state import State

__all__ = ["Contracts", "contract_account"]

MAX_CODE_BYTES = 256 * 1024
MAX_SECRET_BYTES = 64 * 1024
MAX_INLINE_STATE = 64 * 1024  # larger encrypted state lives in the node's blob store, by hash
# A contract's sealed state travels in the result tx (beside a sealed output of up to 512 KiB, under
# the 1 MiB tx limit): a core fails a job whose new state is larger, and settlement refuses one.
MAX_STATE_BYTES = 256 * 1024
MAX_SECRETS = 64
MAX_BLOBS = 256
_MANIFEST_KEYS = frozenset({"name", "http_allowlist", "description"})


class ContractsError(ModuleError):
    pass


def contract_account(contract: bytes) -> bytes:
    """The account a contract pays from (`ctx.transfer`) and callers fund with `--value`."""
    return module_account("contract/" + contract.hex())


class Contracts(Module):
    name = "contracts"
    events = frozenset(
        {"ContractDeployed", "SecretUploaded", "BlobRegistered", "ContractStateUpdated", "ContractEvent"}
    )
    Error = ContractsError

    contracts = StorageMap("contract")
    code = StorageMap("code")
    states = StorageMap("state")  # contract -> {version, state_hash, blob | None}
    secrets = StorageMap("secret")  # contract || name -> {sealed, hash}
    blobs = StorageMap("blob")  # contract || hash -> size

    # ---- interface -------------------------------------------------------------------------------
    def exists(self, state: State, contract: bytes) -> bool:
        return self.contracts.contains(state, contract)

    def record(self, state: State, contract: bytes) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.contracts.get(state, contract)
        return value

    def current_state(self, state: State, contract: bytes) -> dict[str, Any]:
        value: dict[str, Any] = self.states.get(
            state, contract, {"version": 0, "state_hash": None, "blob": None}
        )
        return value

    def apply_state(self, ctx: CallContext, contract: bytes, state_hash: bytes, blob: bytes | None) -> int:
        """Advance the contract's state to `state_hash` (blob inline when small). Returns the version."""
        current = self.current_state(ctx.state, contract)
        version = int(current["version"]) + 1
        inline = blob if blob is not None and len(blob) <= MAX_INLINE_STATE else None
        self.states.set(ctx.state, contract, {"version": version, "state_hash": state_hash, "blob": inline})
        self.emit(ctx, "ContractStateUpdated", contract=contract, version=version, state_hash=state_hash)
        return version

    def emit_contract_event(self, ctx: CallContext, contract: bytes, name: str, data: Any) -> None:
        self.emit(ctx, "ContractEvent", contract=contract, name=name, data=data)

    # ---- calls ---------------------------------------------------------------------------------
    @call()
    def deploy(self, ctx: CallContext, code: bytes, manifest: dict[str, Any]) -> None:
        owner = ctx.signer()
        self.ensure(0 < len(code) <= MAX_CODE_BYTES, "bad_code", f"code must be 1..{MAX_CODE_BYTES} bytes")
        try:
            code.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("bad_code", "contract code must be UTF-8 Python source")
        self.ensure(
            set(manifest) <= _MANIFEST_KEYS,
            "bad_manifest",
            f"manifest keys: {', '.join(sorted(_MANIFEST_KEYS))}",
        )
        allow = manifest.get("http_allowlist", [])
        self.ensure(
            isinstance(allow, list)
            and all(isinstance(h, str) and 0 < len(h) <= 253 for h in allow)
            and len(allow) <= 32,
            "bad_manifest",
            "http_allowlist is a list of at most 32 host names",
        )
        code_hash = codec.sha256(code)
        assert ctx.tx_hash is not None
        contract = codec.sha256(codec.encode({"owner": owner, "tx": ctx.tx_hash, "code_hash": code_hash}))
        self.ensure(not self.exists(ctx.state, contract), "exists", "contract already exists")
        self.contracts.set(
            ctx.state,
            contract,
            {
                "id": contract,
                "owner": owner,
                "code_hash": code_hash,
                "manifest": manifest,
                "created_height": ctx.height,
                "account": contract_account(contract),
                "size": len(code),
            },
        )
        self.code.set(ctx.state, contract, code)
        self.emit(ctx, "ContractDeployed", contract=contract, owner=owner, code_hash=code_hash)

    def _owned(self, ctx: CallContext, contract: bytes) -> dict[str, Any]:
        record = self.record(ctx.state, contract)
        self.ensure(record is not None, "unknown_contract", "no such contract")
        assert record is not None
        self.ensure(record["owner"] == ctx.signer(), "not_owner", "only the contract's owner may do this")
        return record

    @call()
    def upload_secret(self, ctx: CallContext, contract: bytes, name: str, sealed: bytes) -> None:
        self._owned(ctx, contract)
        self.ensure(0 < len(name) <= 64, "bad_name", "secret names are 1..64 characters")
        self.ensure(
            0 < len(sealed) <= MAX_SECRET_BYTES,
            "bad_secret",
            f"sealed secrets are 1..{MAX_SECRET_BYTES} bytes",
        )
        key = contract + name.encode()
        if not self.secrets.contains(ctx.state, key):
            count = sum(1 for _ in self.secrets.items_with_prefix(ctx.state, contract))
            self.ensure(count < MAX_SECRETS, "quota", f"a contract holds at most {MAX_SECRETS} secrets")
        digest = codec.sha256(sealed)
        self.secrets.set(ctx.state, key, {"sealed": sealed, "hash": digest})
        self.emit(ctx, "SecretUploaded", contract=contract, name=name, hash=digest)

    @call()
    def register_blob(self, ctx: CallContext, contract: bytes, blob_hash: bytes, size: int) -> None:
        self._owned(ctx, contract)
        self.ensure(len(blob_hash) == 32 and size > 0, "bad_blob", "blob hash is 32 bytes and size positive")
        key = contract + blob_hash
        if not self.blobs.contains(ctx.state, key):
            count = sum(1 for _ in self.blobs.items_with_prefix(ctx.state, contract))
            self.ensure(count < MAX_BLOBS, "quota", f"a contract registers at most {MAX_BLOBS} blobs")
        self.blobs.set(ctx.state, key, size)
        self.emit(ctx, "BlobRegistered", contract=contract, hash=blob_hash, size=size)
