# pragma version 0.4.3
"""
@title Umbra oracle consumer
@notice Stores a value only if the Umbra oracle contract signed it with its secp256k1 key, for a
        round newer than the last one stored. The oracle's EVM address is the one the Umbra
        chain publishes for the contract (signed by a gatekeeper); the key itself exists only
        inside attested enclaves, so a valid signature means the contract's code produced it.
@dev    The oracle signs keccak256(abi_encode(value, round)): the hash of two uint256 words.
"""

# s must be in the lower half of the curve order: the other half would give a second valid
# signature for the same message (malleability). This is secp256k1's n // 2.
HALF_ORDER: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

oracle: public(address)
latest: public(uint256)
round: public(uint256)

event Reported:
    value: uint256
    round: uint256


@deploy
def __init__(oracle: address):
    self.oracle = oracle


@external
def submit(reported: uint256, report_round: uint256, r: bytes32, s: bytes32, v: uint8):
    """
    @notice Store `reported` for `report_round` if the oracle signed exactly these two numbers.
    """
    assert report_round > self.round, "stale round"
    assert convert(s, uint256) <= HALF_ORDER, "malleable signature"
    digest: bytes32 = keccak256(abi_encode(reported, report_round))
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address) and signer == self.oracle, "not signed by the oracle"
    self.latest = reported
    self.round = report_round
    log Reported(value=reported, round=report_round)
