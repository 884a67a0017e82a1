"""X.509 for the TEE verifiers: certificate bundles, validity at a time, and cached chain checks.

Vendor chains (AMD ARK -> ASK -> VCEK, NVIDIA Device Identity CA -> ... -> device key) are the same
few certificates verified over and over, and a 4096-bit RSA-PSS check costs far more than the
evidence check it guards. So a signature link that verified once is remembered, keyed on the exact
certificates (a `Certificate` hashes and compares by its DER bytes). Validity windows depend on the
verification time, never on a cache, so they are checked on every call; that is cheap.

Every failure is an `AttestationError` at `Step.CHAIN` that names the certificate concerned.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from umbra.tee._inputs import MALFORMED_CERTIFICATE
from umbra.tee._inputs import load_certificates as _load_bundle
from umbra.tee._model import AttestationError, Step
from umbra.tee._roots import RootPinError, load_root

__all__ = [
    "MAX_CHAIN_LENGTH",
    "check_validity",
    "describe",
    "load_certificates",
    "load_pinned_certificates",
    "verify_chain",
]

# Real vendor chains have at most five certificates; the cap bounds the work hostile input can cause.
MAX_CHAIN_LENGTH = 8


def load_certificates(data: bytes, *, what: str) -> tuple[x509.Certificate, ...]:
    """The certificates of PEM (one or more) or DER `data`, in order. `what` names them in errors."""
    try:
        certificates = _parse_certificates(bytes(data))
    except MALFORMED_CERTIFICATE as exc:
        raise AttestationError(Step.CHAIN, f"{what}: {exc}") from None
    if not certificates:
        raise AttestationError(Step.CHAIN, f"{what}: no certificate found")
    return certificates


def load_pinned_certificates(name: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a root pinned in `umbra.tee._roots` (a tampered one is refused)."""
    try:
        data = load_root(name)
    except RootPinError as exc:
        raise AttestationError(Step.CHAIN, str(exc)) from None
    return load_certificates(data, what=f"pinned root {name}")


@lru_cache(maxsize=512)
def _parse_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    with warnings.catch_warnings():
        # AMD issues every VCEK with serial number 0, which RFC 5280 disallows; cryptography
        # warns about it. The certificate is genuine, so the warning is noise here.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        certificates = tuple(_load_bundle(data))
    for certificate in certificates:
        # cryptography parses these parts lazily; reading them now makes a malformed certificate
        # fail here, as a clean refusal, rather than wherever a verifier first touches it.
        certificate.subject, certificate.issuer, certificate.extensions, certificate.public_key()
    return certificates


def describe(certificate: x509.Certificate) -> str:
    """A short human name for a certificate: its subject common name, else the whole subject."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return repr(value.decode(errors="replace") if isinstance(value, bytes) else value)
    return repr(certificate.subject.rfc4514_string())


def check_validity(certificate: x509.Certificate, at: datetime) -> None:
    """Refuse a certificate outside its validity window at `at` (an aware datetime)."""
    if at < certificate.not_valid_before_utc:
        raise AttestationError(
            Step.CHAIN,
            f"certificate {describe(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()} (verification time {at.isoformat()})",
        )
    if at > certificate.not_valid_after_utc:
        raise AttestationError(
            Step.CHAIN,
            f"certificate {describe(certificate)} expired at "
            f"{certificate.not_valid_after_utc.isoformat()} (verification time {at.isoformat()})",
        )


def verify_chain(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], at: datetime
) -> x509.Certificate:
    """Verify `chain` (leaf first, then each issuer in order) up to one of `anchors` at `at`.

    The chain may end with, or simply stop before, the trust anchor: it ends at the first of its
    certificates (after the leaf) that is itself an anchor, and its last certificate below that
    must be signed by an anchor. A self-issued anchor must verify its own signature. Every
    certificate, the anchor included, must be valid at `at`, and every issuer must be allowed to
    sign certificates (basic constraints, key usage, path length). Returns the anchor used.
    """
    if not chain:
        raise AttestationError(Step.CHAIN, "no certificate to verify")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise AttestationError(
            Step.CHAIN, f"certificate chain has {len(chain)} certificates; at most {MAX_CHAIN_LENGTH}"
        )
    path = [chain[0]]
    for certificate in chain[1:]:
        if certificate in anchors:
            break
        path.append(certificate)
    top = path[-1]
    candidates = [anchor for anchor in anchors if anchor.subject == top.issuer]
    if not candidates:
        trusted = ", ".join(describe(anchor) for anchor in anchors) or "none"
        raise AttestationError(
            Step.CHAIN,
            f"certificate {describe(top)} is not issued by a trusted root (trusted: {trusted})",
        )
    refusals: list[AttestationError] = []
    for anchor in candidates:
        try:
            _verify_path([*path, anchor], at)
        except AttestationError as exc:
            refusals.append(exc)
        else:
            return anchor
    raise refusals[0]


def _verify_path(path: Sequence[x509.Certificate], at: datetime) -> None:
    """`path` runs from the leaf to the trust anchor, each certificate issued by the next."""
    for certificate in path:
        check_validity(certificate, at)
    for depth, (child, issuer) in enumerate(itertools.pairwise(path)):
        _verify_link(child, issuer)
        _check_path_length(issuer, certificates_below=depth)
    anchor = path[-1]
    if anchor.subject == anchor.issuer:
        _verify_link(anchor, anchor)


def _check_path_length(issuer: x509.Certificate, *, certificates_below: int) -> None:
    # `certificates_below` counts the CA certificates between `issuer` and the leaf.
    limit = _basic_constraints(issuer)
    if limit is not None and limit.path_length is not None and certificates_below > limit.path_length:
        raise AttestationError(
            Step.CHAIN,
            f"certificate {describe(issuer)} allows {limit.path_length} intermediate CA(s) below it, "
            f"the chain has {certificates_below}",
        )


@lru_cache(maxsize=4096)
def _verify_link(child: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise unless `issuer` may sign certificates and signed `child`. Successes are cached."""
    constraints = _basic_constraints(issuer)
    if constraints is not None and not constraints.ca:
        raise AttestationError(
            Step.CHAIN, f"certificate {describe(issuer)} is not a CA but claims to issue {describe(child)}"
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except ValueError as exc:
        raise AttestationError(
            Step.CHAIN, f"certificate {describe(issuer)} has bad extensions: {exc}"
        ) from None
    if usage is not None and not usage.key_cert_sign:
        raise AttestationError(
            Step.CHAIN, f"certificate {describe(issuer)} may not sign certificates (key usage)"
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = str(exc) or "signature does not verify"
        raise AttestationError(
            Step.CHAIN, f"certificate {describe(child)} is not signed by {describe(issuer)}: {reason}"
        ) from None


def _basic_constraints(certificate: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise AttestationError(
            Step.CHAIN, f"certificate {describe(certificate)} has bad extensions: {exc}"
        ) from None
