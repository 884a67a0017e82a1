# pragma version 0.4.3
"""
@title Umbra inbox
@notice Orders Umbra runtime txs on an EVM chain. Relayers post batches of signed Umbra txs; the
        inbox does not look inside them, it only logs them. Every Umbra node derives one runtime
        block per EVM block from these logs and drops invalid txs itself, deterministically, so
        nothing here needs to be trusted beyond the EVM's ordering.
@dev    The genesis is published once, by the deployer, so a node given only the EVM RPC URL and
        this address can fetch the genesis, and a node given a genesis file can check that it
        names this inbox. Umbra block h is derived from EVM block `genesis_block + h`.
"""

# A batch is the deterministic-CBOR array of encoded signed txs. 120 KiB keeps one batch well
# under the 128 KiB transaction size that EVM tx pools accept.
MAX_BATCH: constant(uint256) = 122880
MAX_GENESIS: constant(uint256) = 65536

event Batch:
    relayer: indexed(address)
    data: Bytes[MAX_BATCH]

event Genesis:
    genesis_hash: indexed(bytes32)
    data: Bytes[MAX_GENESIS]

# Storage, not an immutable, so the deployed code is exactly the compiled runtime bytecode and
# a node can check an address by comparing code.
deployer: public(address)
genesis_hash: public(bytes32)
genesis_block: public(uint256)


@deploy
def __init__():
    self.deployer = msg.sender


@external
def publish_genesis(data: Bytes[MAX_GENESIS]):
    """
    @notice Bind an Umbra genesis to this inbox. Once only, by the deployer.
    """
    assert msg.sender == self.deployer, "only the deployer publishes the genesis"
    assert self.genesis_block == 0, "genesis already published"
    digest: bytes32 = sha256(data)
    self.genesis_hash = digest
    self.genesis_block = block.number
    log Genesis(genesis_hash=digest, data=data)


@external
def submit(data: Bytes[MAX_BATCH]):
    """
    @notice Post one batch of signed Umbra txs. Anyone may relay; the nodes filter.
    @dev    No storage is touched, so the cost is the calldata and the log only.
    """
    log Batch(relayer=msg.sender, data=data)
