"""The key tree: deterministic, distinct per label and contract, EVM addresses as Ethereum's."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from umbra import crypto
from umbra.enclave.execution import open_state, seal_state
from umbra.enclave.keytree import MasterKey, evm_address
from umbra.enclave.sandbox import ContractServices

pytestmark = pytest.mark.timeout(60)
MASTER = MasterKey(bytes(range(32)))
C1, C2 = b"\x01" * 32, b"\x02" * 32


def test_evm_address_matches_ethereum() -> None:
    # The well-known address of private key 1.
    key = ec.derive_private_key(1, ec.SECP256K1())
    assert evm_address(key.public_key()).hex() == "7e5f4552091a69125d5dfcb7b8c2659029395bdf"


def test_derivations_are_deterministic_and_distinct() -> None:
    a, again, b = MASTER.contract(C1), MasterKey(bytes(range(32))).contract(C1), MASTER.contract(C2)
    assert a.ecdh.public_key == again.ecdh.public_key and a.evm_address == again.evm_address
    assert a.signing.public_key == again.signing.public_key and a.k_job(b"j") == again.k_job(b"j")
    assert len({a.ecdh.public_key, b.ecdh.public_key, MASTER.public_key}) == 3
    secrets = {a.ecdh.secret, a.state_key.key, a.commit_key, a.signing.seed, MASTER.secret}
    assert len(secrets) == 5  # one label per purpose: no key doubles as another
    assert a.k_job(b"job-1") != a.k_job(b"job-2")
    assert "secret" not in repr(a) and MASTER.secret.hex() not in repr(MASTER)


def test_state_encryption_is_deterministic_bound_and_readable_across_epochs() -> None:
    keys = MASTER.contract(C1)
    blob = seal_state(keys, 0, 3, {"n": 1})
    assert blob == seal_state(keys, 0, 3, {"n": 1})  # replicas agree on the state hash
    assert blob != seal_state(keys, 0, 3, {"n": 2}) and blob != seal_state(keys, 0, 4, {"n": 1})
    newer = MasterKey(bytes(32))
    assert open_state({0: MASTER, 1: newer}, C1, 3, blob) == {"n": 1}  # old epochs stay readable
    from umbra.enclave.execution import ExecutionFault

    with pytest.raises(ExecutionFault, match="does not open"):
        open_state({0: MASTER}, C1, 4, blob)  # the version is bound
    with pytest.raises(ExecutionFault, match="does not open"):
        open_state({0: MASTER}, C2, 3, blob)  # and the contract
    with pytest.raises(ExecutionFault, match="epoch 0"):
        open_state({1: newer}, C1, 3, blob)


def test_contract_signatures_verify_with_the_published_keys() -> None:
    keys = MASTER.contract(C1)
    services = ContractServices(keys, body_limit=1024)
    signature = services.sign("ed25519", b"hello")
    assert crypto.verify_digest(b"hello", signature, keys.signing.public_key)
    evm = services.sign("secp256k1", b"hello")
    assert (
        len(evm) == 64
        and int.from_bytes(evm[32:], "big")
        <= 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
    )
    with pytest.raises(ValueError):
        services.sign("rsa", b"x")
