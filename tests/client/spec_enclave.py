"""The enclave side of the client <-> core formats, written independently of the client for tests.

It follows the enclave core as implemented (src/umbra/enclave/execution.py, which differs from
docs/protocol.md "Exact sealed formats" in the ways noted in umbra.client._protocol) and shares
no code with `umbra.client` (only the crypto facade and the real key tree), so a client that
drifts from the core fails against it. It plays a worker core: opens sealed inputs, queries and
secrets, and makes signed results and replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from umbra import codec, crypto
from umbra.enclave.keytree import ContractKeys, MasterKey

CHAIN_ID = "umbra-client-test"


@dataclass
class SpecContract:
    """One contract's keys under one epoch, and what a gatekeeper publishes for it."""

    keys: ContractKeys
    chain_id: str = CHAIN_ID
    epoch: int = 0

    @classmethod
    def derive(
        cls, master: MasterKey, contract: bytes, *, chain_id: str = CHAIN_ID, epoch: int = 0
    ) -> SpecContract:
        return cls(master.contract(contract), chain_id, epoch)

    @property
    def contract(self) -> bytes:
        return self.keys.contract

    def key_body(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "epoch": self.epoch,
            "ecdh_pk": self.keys.ecdh.public_key,
            "sign_pk": self.keys.signing.public_key,
            "evm_address": self.keys.evm_address,
        }

    def key_record(self, gatekeeper: crypto.SigningKey) -> dict[str, Any]:
        """`keys/contract_key` as the node serves it (JSON, bytes as 0x-hex)."""
        body = self.key_body()
        signature = gatekeeper.sign("umbra/contract-key/v1", body)
        return codec.jsonable({**body, "gatekeeper": gatekeeper.public_key, "signature": signature})

    # ---- inputs ------------------------------------------------------------------------------------
    def open_input(self, sealed: bytes, *, sender: bytes, reply_pk: bytes, nonce: int) -> dict[str, Any]:
        info = codec.encode(
            {
                "chain_id": self.chain_id,
                "contract": self.contract,
                "sender": sender,
                "reply_pk": reply_pk,
                "nonce": nonce,
            }
        )
        value: dict[str, Any] = codec.decode(crypto.hpke_open(self.keys.ecdh, sealed, info))
        return value

    def open_secret(self, sealed: bytes, *, name: str) -> bytes:
        info = codec.encode(
            {"chain_id": self.chain_id, "contract": self.contract, "purpose": "umbra/secret/v1", "name": name}
        )
        return crypto.hpke_open(self.keys.ecdh, sealed, info)

    # ---- results -----------------------------------------------------------------------------------
    def result(
        self,
        worker: crypto.SigningKey,
        *,
        job: bytes,
        code_hash: bytes,
        input_hash: bytes,
        reply_pk: bytes,
        ok: bool,
        output: Any,
        error: str | None,
        prev_state_hash: bytes | None = None,
        new_state_hash: bytes | None = None,
        sealed_output: bytes | None = None,
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """(body, signature, sealed_output) as `compute.submit_result` takes them."""
        k_job = self.keys.k_job(job)
        committed = codec.encode(output if ok else {"error": error})
        opened = {"ok": True, "output": output} if ok else {"ok": False, "error": error}
        if sealed_output is None:
            sealed_output = crypto.hpke_seal(
                reply_pk,
                codec.encode({**opened, "k_job": k_job}),
                codec.encode({"chain_id": self.chain_id, "job": job}),
            )
        body = {
            "job": job,
            "contract": self.contract,
            "worker": worker.public_key,
            "code_hash": code_hash,
            "input_hash": input_hash,
            "sealed_output_hash": codec.sha256(sealed_output),
            "output_commitment": crypto.commitment(k_job, committed),
            "prev_state_hash": prev_state_hash,
            "new_state_hash": new_state_hash if new_state_hash is not None else codec.sha256(b"state"),
            "failed": not ok,
            "transfers": [],
            "events": [],
        }
        return body, worker.sign("umbra/result/v1", body), sealed_output

    # ---- queries -----------------------------------------------------------------------------------
    def open_query(self, raw: bytes) -> tuple[dict[str, Any], bytes]:
        """The verified query body and its caller, as a worker core reads them."""
        info = codec.encode(
            {"chain_id": self.chain_id, "contract": self.contract, "purpose": "umbra/query/v1"}
        )
        inner = codec.decode(crypto.hpke_open(self.keys.ecdh, raw, info))
        body = inner["body"]
        assert set(body) == {"contract", "method", "args", "reply_pk", "expiry_ms"}
        crypto.verify_or_raise("umbra/query/v1", body, inner["signature"], inner["caller"])
        assert body["contract"] == self.contract
        return body, inner["caller"]

    def query_reply(
        self,
        worker: crypto.SigningKey,
        raw_query: bytes,
        *,
        height: int,
        ok: bool,
        output: Any,
        error: str | None,
        reply_pk: bytes | None = None,
    ) -> dict[str, Any]:
        """The worker's JSON answer to POST /query."""
        body, _ = self.open_query(raw_query)
        query_hash = codec.sha256(raw_query)
        reply = {"ok": True, "output": output} if ok else {"ok": False, "error": error}
        sealed_reply = crypto.hpke_seal(
            reply_pk or body["reply_pk"],
            codec.encode(reply),
            codec.encode({"chain_id": self.chain_id, "contract": self.contract, "query_hash": query_hash}),
        )
        signed = {
            "contract": self.contract,
            "height": height,
            "state_hash": codec.sha256(b"state"),
            "sealed_reply_hash": codec.sha256(sealed_reply),
            "query_hash": query_hash,
        }
        return {
            "worker": codec.to_hex(worker.public_key),
            "height": height,
            "reply": codec.jsonable(signed),
            "signature": codec.to_hex(worker.sign("umbra/query-reply/v1", signed)),
            "sealed_reply": codec.to_hex(sealed_reply),
        }
