"""The key tree (docs/protocol.md "keys"): everything derives from `master_secret[epoch]`.

    master = MasterKey(secret)              # 32 random bytes, made by a gatekeeper core
    master.public_key                       # master_pk, published on chain
    keys = master.contract(contract_id)     # ecdh, state, commit, signing (Ed25519 + secp256k1)

Only enclave cores ever build these objects.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from umbra import crypto

__all__ = ["ContractKeys", "MasterKey", "evm_address"]

_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Derived contract keys kept per master: deriving costs about a millisecond (the secp256k1 scalar
# multiplication above all), and every job and query of a contract needs them.
_CONTRACT_CACHE = 4096


def evm_address(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Ethereum's address of a secp256k1 key: the last 20 bytes of keccak-256 of the raw point."""
    point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    digest = keccak.new(digest_bits=256, data=point[1:]).digest()
    return digest[12:]


@dataclass(frozen=True, repr=False)
class ContractKeys:
    """One contract's keys under one epoch's master."""

    contract: bytes
    ecdh: crypto.EcdhKey  # opens sealed inputs, secrets and queries
    state_key: crypto.AeadKey  # encrypts the contract's state
    commit_key: bytes  # each job's k_job derives from it
    signing: crypto.SigningKey  # Ed25519: what `ctx.sign` uses
    secp256k1: ec.EllipticCurvePrivateKey  # EVM interop

    @cached_property
    def evm_address(self) -> bytes:
        return evm_address(self.secp256k1.public_key())

    def k_job(self, job: bytes) -> bytes:
        return crypto.derive_key(self.commit_key, "umbra/contract/job-commit", job)

    def __repr__(self) -> str:
        return f"ContractKeys(0x{self.contract.hex()})"


class MasterKey:
    """`master_secret[epoch]` and what derives from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("a master secret is 32 bytes")
        self.secret = secret
        self._ecdh = crypto.EcdhKey(crypto.derive_key(secret, "umbra/master-ecdh"))
        self._contracts: OrderedDict[bytes, ContractKeys] = OrderedDict()

    @property
    def public_key(self) -> bytes:
        return self._ecdh.public_key

    def contract(self, contract: bytes) -> ContractKeys:
        """The contract's keys (derived once, then kept: they are a pure function of both inputs)."""
        keys = self._contracts.get(contract)
        if keys is None:
            keys = self._contracts[contract] = self._derive(contract)
            if len(self._contracts) > _CONTRACT_CACHE:
                self._contracts.popitem(last=False)
        else:
            self._contracts.move_to_end(contract)
        return keys

    def _derive(self, contract: bytes) -> ContractKeys:
        def derive(label: str) -> bytes:
            return crypto.derive_key(self.secret, label, contract)

        # Reduce 64 derived bytes mod n-1 and add 1: a valid scalar with negligible bias.
        wide = crypto.derive_key(self.secret, "umbra/contract/sign-secp256k1", contract, length=64)
        scalar = int.from_bytes(wide, "big") % (_SECP256K1_ORDER - 1) + 1
        return ContractKeys(
            contract=contract,
            ecdh=crypto.EcdhKey(derive("umbra/contract/ecdh")),
            state_key=crypto.AeadKey(derive("umbra/contract/state")),
            commit_key=derive("umbra/contract/commit"),
            signing=crypto.SigningKey(derive("umbra/contract/sign-ed25519")),
            secp256k1=ec.derive_private_key(scalar, ec.SECP256K1()),
        )

    def __repr__(self) -> str:
        return f"MasterKey({self.public_key.hex()})"
