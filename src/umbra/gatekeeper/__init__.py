"""Gatekeepers: the worker host in the gatekeeper role, plus the key duties it carries out.

The core decides, from the chain it verified, what is due (docs/protocol.md "keys"):
- no master key yet and this gatekeeper's operator is a genesis gatekeeper operator: generate
  the epoch-0 master key and publish its public key (`keys.init_master`);
- a rotation is pending (`RotationStarted`): generate the next epoch's key (`keys.publish_master`);
- an attested, unexpired, unrevoked worker lacks an epoch this gatekeeper holds: hand it over
  (`keys.handover`, HPKE to the worker's registered ECDH key; the core refuses any other worker);
- a deployed contract has no key for the current epoch: publish it (`keys.publish_contract_key`).
This hook posts the txs; each duty is posted once and retried only if it is still due later.
"""

from __future__ import annotations

import logging
from typing import Any

from umbra import codec
from umbra.enclave.transport import CoreError
from umbra.worker.host import Host

__all__ = ["gatekeeper_duties"]

log = logging.getLogger("umbra.gatekeeper")


def gatekeeper_duties(host: Host, duties: dict[str, Any]) -> None:
    due = duties.get("gatekeeper")
    if not due:
        return
    if due["init_master"] and not host.busy(("master", 0)):
        signed = host.core.call({"op": "generate_master", "epoch": 0})
        host.post(
            ("master", 0),
            "keys",
            "init_master",
            gatekeeper=signed["gatekeeper"],
            master_pk=signed["master_pk"],
            signature=signed["signature"],
        )
        log.info("publishing the master key of epoch 0")
    epoch = due["publish_master"]
    if epoch is not None and not host.busy(("master", epoch)):
        signed = host.core.call({"op": "generate_master", "epoch": epoch})
        host.post(
            ("master", epoch),
            "keys",
            "publish_master",
            gatekeeper=signed["gatekeeper"],
            epoch=epoch,
            master_pk=signed["master_pk"],
            signature=signed["signature"],
        )
        log.info("rotation: publishing the master key of epoch %d", epoch)
    for worker, epoch in due["handovers"]:
        key = ("handover", worker, epoch)
        if host.busy(key):
            continue
        try:
            sealed = host.core.call({"op": "handover", "worker": worker, "epoch": epoch})
        except CoreError as exc:
            log.warning("no handover to %s: %s", codec.to_hex(worker), exc.message)
            continue
        host.post(
            key,
            "keys",
            "handover",
            **{k: sealed[k] for k in ("gatekeeper", "worker", "epoch", "ciphertext", "signature")},
        )
        log.info("handing epoch %d over to %s", epoch, codec.to_hex(worker))
    for contract, epoch in due["contract_keys"]:
        key = ("contract_key", contract, epoch)
        if host.busy(key):
            continue
        published = host.core.call({"op": "contract_key", "contract": contract, "epoch": epoch})
        host.post(
            key,
            "keys",
            "publish_contract_key",
            **{
                k: published[k]
                for k in ("gatekeeper", "contract", "epoch", "ecdh_pk", "sign_pk", "evm_address", "signature")
            },
        )
        log.info("publishing the key of contract %s for epoch %d", codec.to_hex(contract), epoch)
