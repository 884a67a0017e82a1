"""The simulated TEE of development networks (`sim`), built the way vendor TEEs are.

A `SimAuthority` is the dev root of one network: an Ed25519 self-signed CA, the stand-in for a
vendor root such as AMD's ARK. It issues each simulated CPU a `SimHardware` identity: an Ed25519
hardware key certified by the root, like a VCEK, plus a machine secret for sealing. A
`SimPlatform` (one CPU running one code tree) signs evidence with the hardware key:

    evidence = cbor([body_bytes, signature])
    body     = {version: 1, presented_type, simulated: true, measurement, report_data, debug,
                timestamp_ms, hw_cert}
    signature = Ed25519(hardware key, SHA-256(b"umbra/sim-evidence/v1" || body_bytes))

The measurement is the SHA-256 of the worker's code tree, so equal code measures equal on every
machine. A sim worker may present itself as sgx, tdx, sev-snp or nitro (to exercise replication
across TEE types), but its evidence stays signed by the dev root and marked simulated. There is no
pinned root for sim: the verifier refuses unless given the network's dev root, and the policy
refuses sim evidence unless the network allows it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from umbra.tee._inputs import MALFORMED_CERTIFICATE
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence, utc
from umbra.tee._x509 import load_certificates, verify_chain

__all__ = [
    "PRESENTED_TYPES",
    "SimAuthority",
    "SimHardware",
    "SimPlatform",
    "SimVerifier",
    "code_tree_measurement",
    "evidence_time",
]

# The TEE types a sim worker can present (`umbra worker --tee-type ...`); "sim" presents as itself.
PRESENTED_TYPES = ("sim", "sgx", "tdx", "sev-snp", "nitro")

_EVIDENCE_TAG = b"umbra/sim-evidence/v1"
_SEAL_TAG = b"umbra/sim-seal/v1"
_CODE_TREE_TAG = b"umbra/code-tree/v1"
_EVIDENCE_VERSION = 1
_HARDWARE_FILE_VERSION = 1
_BODY_KEYS = frozenset(
    {
        "version",
        "presented_type",
        "simulated",
        "measurement",
        "report_data",
        "debug",
        "timestamp_ms",
        "hw_cert",
    }
)
_MEASUREMENT_LEN = 32
_REPORT_DATA_LEN = 64
_SIGNATURE_LEN = 64
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def code_tree_measurement(root: Path | None = None) -> bytes:
    """SHA-256 of a code tree: every `*.py` under `root` (default: the installed `umbra` package).

    The digest covers a sorted listing of (relative POSIX path, SHA-256 of content), so it depends
    on the code only, never on where it is installed, file times or bytecode caches.
    """
    return _installed_package_measurement() if root is None else _measure_tree(root)


@cache
def _installed_package_measurement() -> bytes:
    return _measure_tree(_PACKAGE_ROOT)


def _measure_tree(root: Path) -> bytes:
    if not root.is_dir():
        raise ValueError(f"code tree {root} is not a directory")
    listing = sorted(
        (path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).digest())
        for path in root.rglob("*.py")
        if "__pycache__" not in path.relative_to(root).parts and path.is_file()
    )
    return hashlib.sha256(_CODE_TREE_TAG + cbor2.dumps(listing, canonical=True)).digest()


class SimAuthority:
    """The dev root of one development network: issues simulated CPUs their hardware identity."""

    def __init__(self, key: Ed25519PrivateKey, certificate: x509.Certificate) -> None:
        if key.public_key().public_bytes_raw() != _ed25519_key_of(certificate).public_bytes_raw():
            raise ValueError("the dev root certificate does not belong to the given key")
        self._key = key
        self._certificate = certificate

    @classmethod
    def create(
        cls, *, now: datetime, name: str = "Umbra dev root", valid_for: timedelta = timedelta(days=3650)
    ) -> SimAuthority:
        key = Ed25519PrivateKey.generate()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, None)
        )
        return cls(key, certificate)

    @classmethod
    def from_pem(cls, data: bytes) -> SimAuthority:
        """The authority saved by `to_pem`: a PKCS#8 private key and the root certificate."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise ValueError(f"not a sim dev root (private key and certificate PEM): {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the sim dev root key must be Ed25519")
        return cls(key, certificate)

    @classmethod
    def load(cls, path: Path) -> SimAuthority:
        return cls.from_pem(path.read_bytes())

    def save(self, path: Path) -> None:
        _write_secret(path, self.to_pem())

    def to_pem(self) -> bytes:
        """Private key and certificate: a secret of the dev network, never put on chain."""
        private = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return private + self.cert_pem

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def cert_pem(self) -> bytes:
        """The public root certificate: what genesis names and verifiers take as `Endorsements.root`."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def issue_hardware(self, *, now: datetime, valid_for: timedelta = timedelta(days=7 * 365)) -> SimHardware:
        """A new simulated CPU: a fresh hardware key certified by this root, and a machine secret."""
        key = Ed25519PrivateKey.generate()
        chip_id = hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Umbra sim CPU {chip_id[:16]}")])
            )
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, None)
        )
        return SimHardware(key, certificate, secrets.token_bytes(32))


class SimHardware:
    """One simulated CPU: its hardware signing key, the dev root's certificate for it, and the
    machine secret that sealing keys derive from. Persisted so a restarted worker on the same
    "machine" keeps its identity and can unseal what it sealed."""

    def __init__(self, key: Ed25519PrivateKey, certificate: x509.Certificate, machine_secret: bytes) -> None:
        if key.public_key().public_bytes_raw() != _ed25519_key_of(certificate).public_bytes_raw():
            raise ValueError("the hardware certificate does not belong to the hardware key")
        if len(machine_secret) != 32:
            raise ValueError("the machine secret must be 32 bytes")
        self._key = key
        self._certificate = certificate
        self._machine_secret = bytes(machine_secret)

    @classmethod
    def from_bytes(cls, data: bytes) -> SimHardware:
        try:
            fields = cbor2.loads(data)
            if not isinstance(fields, dict) or fields.get("version") != _HARDWARE_FILE_VERSION:
                raise ValueError("unknown format version")
            key = Ed25519PrivateKey.from_private_bytes(fields["key"])
            certificate = x509.load_der_x509_certificate(fields["cert"])
            return cls(key, certificate, fields["machine_secret"])
        except (cbor2.CBORError, KeyError, TypeError, ValueError, x509.InvalidVersion) as exc:
            raise ValueError(f"not a sim hardware file: {exc}") from None

    def to_bytes(self) -> bytes:
        """The machine secret file: whoever holds it *is* this CPU, so keep it private."""
        return cbor2.dumps(
            {
                "version": _HARDWARE_FILE_VERSION,
                "key": self._key.private_bytes_raw(),
                "cert": self._certificate.public_bytes(serialization.Encoding.DER),
                "machine_secret": self._machine_secret,
            },
            canonical=True,
        )

    @classmethod
    def load(cls, path: Path) -> SimHardware:
        return cls.from_bytes(path.read_bytes())

    def save(self, path: Path) -> None:
        _write_secret(path, self.to_bytes())

    @classmethod
    def load_or_issue(cls, path: Path, authority: SimAuthority, *, now: datetime) -> SimHardware:
        """The CPU saved at `path`, or a new one issued by `authority` and saved there."""
        if path.exists():
            hardware = cls.load(path)
            try:
                hardware.certificate.verify_directly_issued_by(authority.certificate)
            except (ValueError, TypeError, InvalidSignature):
                raise ValueError(
                    f"the sim hardware at {path} belongs to another dev network's root"
                ) from None
            return hardware
        hardware = authority.issue_hardware(now=now)
        hardware.save(path)
        return hardware

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chip_id(self) -> bytes:
        """SHA-256 of the hardware public key: stable for the life of this CPU, like SNP's CHIP_ID."""
        return hashlib.sha256(self._key.public_key().public_bytes_raw()).digest()

    def _sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def _derive(self, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._machine_secret)


class SimPlatform:
    """Producer side: one simulated CPU running one code tree, presenting one TEE type."""

    def __init__(
        self,
        hardware: SimHardware,
        *,
        presented_type: str = "sim",
        measurement: bytes | None = None,
        debug: bool = False,
    ) -> None:
        if presented_type not in PRESENTED_TYPES:
            raise ValueError(
                f"sim cannot present {presented_type!r}; choose one of {', '.join(PRESENTED_TYPES)}"
            )
        measurement = code_tree_measurement() if measurement is None else bytes(measurement)
        if len(measurement) != _MEASUREMENT_LEN:
            raise ValueError(f"a sim measurement is {_MEASUREMENT_LEN} bytes, got {len(measurement)}")
        self._hardware = hardware
        self._presented_type = presented_type
        self._measurement = measurement
        self._debug = debug

    @property
    def hardware(self) -> SimHardware:
        return self._hardware

    @property
    def presented_type(self) -> str:
        return self._presented_type

    @property
    def measurement(self) -> bytes:
        return self._measurement

    def evidence(self, report_data: bytes, *, at: datetime) -> bytes:
        """Signed evidence binding `report_data` (up to 64 bytes, zero-padded like REPORTDATA)."""
        if len(report_data) > _REPORT_DATA_LEN:
            raise ValueError(f"report_data is at most {_REPORT_DATA_LEN} bytes, got {len(report_data)}")
        body = {
            "version": _EVIDENCE_VERSION,
            "presented_type": self._presented_type,
            "simulated": True,
            "measurement": self._measurement,
            "report_data": bytes(report_data).ljust(_REPORT_DATA_LEN, b"\0"),
            "debug": self._debug,
            "timestamp_ms": (utc(at) - _EPOCH) // timedelta(milliseconds=1),
            "hw_cert": self._hardware.certificate.public_bytes(serialization.Encoding.DER),
        }
        body_bytes = cbor2.dumps(body, canonical=True)
        signature = self._hardware._sign(_signed_message(body_bytes))
        return cbor2.dumps([body_bytes, signature], canonical=True)

    def seal_key(self) -> bytes:
        """The 32-byte sealing key of this code tree on this CPU.

        Derived from the machine secret and the measurement, as SGX's MRENCLAVE sealing policy
        does: another CPU, or a changed code tree on this one, derives a different key.
        """
        return self._hardware._derive(_SEAL_TAG + self._measurement)


class SimVerifier:
    """Verifies sim evidence against the network's dev root, given as `Endorsements.root`."""

    tee_type: ClassVar[str] = "sim"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        body_bytes, signature, body = _parse(evidence)
        debug: bool = body["debug"]
        hw_cert = _check_chain(body["hw_cert"], endorsements.root, at, debug=debug)
        try:
            _ed25519_key_of(hw_cert).verify(signature, _signed_message(body_bytes))
        except InvalidSignature:
            raise AttestationError(
                Step.SIGNATURE, "evidence signature does not verify with the hardware key", debug=debug
            ) from None
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform=body["presented_type"],
            measurements={"measurement": body["measurement"].hex()},
            report_data=body["report_data"],
            debug=debug,
            issued_at=_timestamp(body["timestamp_ms"]),
            nonce=None,
            claims={
                "simulated": True,
                "chip_id": hashlib.sha256(_ed25519_key_of(hw_cert).public_bytes_raw()).hexdigest(),
            },
        )


def evidence_time(evidence: bytes) -> datetime | None:
    """The time sim evidence says it was made, unverified (for `--at evidence`); None if unreadable."""
    try:
        _, _, body = _parse(evidence)
    except AttestationError:
        return None
    return _timestamp(body["timestamp_ms"])


def _parse(evidence: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """Split evidence into signed body bytes, signature and the decoded, type-checked body.

    Trailing bytes after the outer CBOR item are ignored; the body must be deterministic CBOR,
    so one body has exactly one encoding under the signature.
    """
    outer = _decode(evidence, "evidence")
    if not (isinstance(outer, list) and len(outer) == 2 and all(isinstance(item, bytes) for item in outer)):
        raise AttestationError(
            Step.PARSE, "sim evidence must be a CBOR array [body, signature] of byte strings"
        )
    body_bytes, signature = outer
    if len(signature) != _SIGNATURE_LEN:
        raise AttestationError(Step.PARSE, f"signature must be {_SIGNATURE_LEN} bytes, got {len(signature)}")
    body = _decode(body_bytes, "evidence body")
    if not isinstance(body, dict) or set(body) != _BODY_KEYS:
        raise AttestationError(Step.PARSE, f"evidence body must be a map with exactly {sorted(_BODY_KEYS)}")
    _check_body_types(body)
    if cbor2.dumps(body, canonical=True) != body_bytes:
        raise AttestationError(Step.PARSE, "evidence body is not deterministic CBOR", debug=body["debug"])
    return body_bytes, signature, body


def _check_body_types(body: dict[str, Any]) -> None:
    if type(body["version"]) is not int or body["version"] != _EVIDENCE_VERSION:
        raise AttestationError(Step.PARSE, f"unsupported sim evidence version {body['version']!r}")
    if body["presented_type"] not in PRESENTED_TYPES:
        raise AttestationError(Step.PARSE, f"unknown presented type {body['presented_type']!r}")
    if body["simulated"] is not True:
        raise AttestationError(Step.PARSE, "sim evidence must be marked simulated")
    if type(body["debug"]) is not bool:
        raise AttestationError(Step.PARSE, "debug must be a boolean")
    for name, length in (("measurement", _MEASUREMENT_LEN), ("report_data", _REPORT_DATA_LEN)):
        if not isinstance(body[name], bytes) or len(body[name]) != length:
            raise AttestationError(Step.PARSE, f"{name} must be {length} bytes", debug=body["debug"])
    if type(body["timestamp_ms"]) is not int or body["timestamp_ms"] < 0:
        raise AttestationError(Step.PARSE, "timestamp_ms must be a non-negative integer", debug=body["debug"])
    _timestamp(body["timestamp_ms"])
    if not isinstance(body["hw_cert"], bytes):
        raise AttestationError(Step.PARSE, "hw_cert must be DER bytes", debug=body["debug"])


def _check_chain(hw_cert_der: bytes, root: bytes | None, at: datetime, *, debug: bool) -> x509.Certificate:
    """The hardware certificate, once it chains to the dev root and both are valid at `at`."""
    try:
        hw_cert = x509.load_der_x509_certificate(hw_cert_der)
        _ed25519_key_of(hw_cert)
        # cryptography parses names and extensions on first use: make malformed ones fail here
        _ = (hw_cert.subject, hw_cert.issuer, hw_cert.extensions)
    except MALFORMED_CERTIFICATE as exc:
        raise AttestationError(
            Step.PARSE, f"hw_cert is not an Ed25519 certificate: {exc}", debug=debug
        ) from None
    if root is None:
        raise AttestationError(
            Step.CHAIN,
            "sim evidence needs the network's dev root (there is no pinned root for sim)",
            debug=debug,
        )
    try:
        verify_chain([hw_cert], load_certificates(root, what="sim dev root"), at)
    except AttestationError as exc:
        raise AttestationError(exc.step, exc.message, debug=debug) from None
    return hw_cert


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ed25519_key_of(cert: x509.Certificate) -> Ed25519PublicKey:
    try:
        key = cert.public_key()
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key


def _signed_message(body_bytes: bytes) -> bytes:
    return hashlib.sha256(_EVIDENCE_TAG + body_bytes).digest()


def _timestamp(timestamp_ms: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        raise AttestationError(Step.PARSE, f"timestamp_ms {timestamp_ms} is out of range") from None


def _decode(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data, max_depth=8, allow_indefinite=False)
    except Exception as exc:  # cbor2 raises many exception types on hostile input
        raise AttestationError(Step.PARSE, f"{what} is not CBOR: {type(exc).__name__}: {exc}"[:300]) from None


def _write_secret(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, atomically (no torn file after a crash)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
