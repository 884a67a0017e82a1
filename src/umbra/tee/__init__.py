"""`umbra.tee`: TEE evidence producers and verifiers. Needs nothing else from Umbra.

    verdict = umbra.tee.verify_at_time("dcap", quote, Endorsements(collateral=...), at)

Every outcome is a `Verdict`; hostile input gives `ok=False` with the failing step, never an
exception. Verifier modules load on first use, so a type's dependencies (dcap-qvl, say) cost
nothing to callers that never verify that type.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from umbra.tee._model import (
    TEE_TYPES,
    AttestationError,
    Endorsements,
    Step,
    Verdict,
    VerifiedEvidence,
    Verifier,
    utc,
)

__all__ = [
    "TEE_TYPES",
    "AttestationError",
    "Endorsements",
    "Step",
    "Verdict",
    "VerifiedEvidence",
    "Verifier",
    "get_verifier",
    "verify",
    "verify_at_time",
]

# tee type -> "module:Class" of its verifier
_VERIFIERS: dict[str, str] = {
    "dcap": "umbra.tee._dcap:DcapVerifier",
    "sev-snp": "umbra.tee._sev_snp:SevSnpVerifier",
    "nitro": "umbra.tee._nitro:NitroVerifier",
    "nvidia-gpu": "umbra.tee._nvidia:NvidiaGpuVerifier",
    "arm-cca": "umbra.tee._arm_cca:ArmCcaVerifier",
    "psa": "umbra.tee._psa:PsaVerifier",
    "sim": "umbra.tee._sim:SimVerifier",
}

_instances: dict[str, Verifier] = {}


def get_verifier(tee_type: str) -> Verifier:
    """The shared verifier instance for a type (instances cache verified vendor chains)."""
    if tee_type not in _VERIFIERS:
        raise AttestationError(
            Step.UNSUPPORTED, f"unknown TEE type {tee_type!r}; known: {', '.join(TEE_TYPES)}"
        )
    verifier = _instances.get(tee_type)
    if verifier is None:
        module_name, _, class_name = _VERIFIERS[tee_type].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise AttestationError(
                Step.UNSUPPORTED, f"verifier for {tee_type} is unavailable: {exc}"
            ) from None
        verifier = getattr(module, class_name)()
        _instances[tee_type] = verifier
    return verifier


def verify_at_time(
    tee_type: str,
    evidence: bytes,
    endorsements: Endorsements,
    at: datetime,
    *,
    allow_debug: bool = False,
    nonce: bytes | None = None,
) -> Verdict:
    """Verify evidence at `at`. Debug is refused unless `allow_debug`, and always for dcap."""
    verified: VerifiedEvidence | None = None
    try:
        verifier = get_verifier(tee_type)
        verified = verifier.verify_at_time(bytes(evidence), endorsements, utc(at))
        if verified.debug and (not allow_debug or tee_type == "dcap"):
            raise AttestationError(Step.DEBUG, "evidence was generated in debug mode", debug=True)
        if nonce is not None and verified.nonce != nonce:
            raise AttestationError(Step.NONCE, "evidence nonce does not match the expected nonce")
    except AttestationError as exc:
        debug = verified.debug if verified is not None else exc.debug
        return _verdict(tee_type, verified, ok=False, debug=debug, error=str(exc), step=exc.step.value)
    except Exception as exc:  # backstop: a verifier bug on hostile input is still a clean refusal
        detail = f"{type(exc).__name__}: {exc}"[:300]
        return _verdict(
            tee_type, verified, ok=False, debug=None, error=f"parse: {detail}", step=Step.PARSE.value
        )
    return _verdict(tee_type, verified, ok=True, debug=verified.debug, error=None, step=None)


def verify(
    tee_type: str,
    evidence: bytes,
    endorsements: Endorsements,
    *,
    allow_debug: bool = False,
    nonce: bytes | None = None,
) -> Verdict:
    """`verify_at_time` at the current time."""
    return verify_at_time(
        tee_type, evidence, endorsements, datetime.now(UTC), allow_debug=allow_debug, nonce=nonce
    )


def _verdict(
    tee_type: str,
    verified: VerifiedEvidence | None,
    *,
    ok: bool,
    debug: bool | None,
    error: str | None,
    step: str | None,
) -> Verdict:
    if verified is None:
        return Verdict(ok, tee_type, None, [], debug, {}, None, error, step)
    return Verdict(
        ok=ok,
        type=tee_type,
        status=verified.tcb_status,
        advisory_ids=sorted(verified.advisory_ids),
        debug=debug,
        measurements=dict(verified.measurements),
        report_data=verified.report_data.hex(),
        error=error,
        step=step,
        platform=verified.platform,
        claims={str(k): _jsonable(v) for k, v in verified.claims.items()},
        evidence=verified,
    )


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
