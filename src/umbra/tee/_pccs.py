"""DCAP collateral from a PCCS (or Intel's PCS), cached on disk.

    client = PccsClient("https://pccs.example:8081", cache_dir)
    collateral = client.fetch_collateral(quote)  # JSON bytes for Endorsements.collateral

The client speaks the v4 certification API. It fetches the PCK CRL of the quote's PCK CA, the TCB
Info for the quote's FMSPC and the QE Identity (from the SGX or the TDX endpoints, by the quote's
TEE type), plus the root CA CRL, and it reads the issuer chains from the response headers. The
result has the shape of the collateral files, dcap-qvl's `QuoteCollateralV3` JSON. TCB Info and
QE Identity stay the exact JSON text that Intel signed.

Nothing is fetched except from the URLs the caller configures. `dcap_qvl.get_collateral` speaks
the same protocol and can be pointed at any PCCS, but this module does not use it. It fetches the
whole bundle in one call, so nothing could be cached per URL. Every failure it raises is a
ValueError, so an unreachable PCCS looks the same as a bad answer. It is async only. And when the
PCCS has no root CA CRL, it downloads one from the distribution point in Intel's root certificate,
a host the caller never named.

Every response is cached on disk under its URL until the nextUpdate of what it carries (the TCB
Info, the QE Identity or the CRL). At `now` past that time the entry is fetched again. A failure
raises `PccsError`, or `PccsUnreachableError` when no answer came back at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import string
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote

import dcap_qvl
import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from umbra.tee._model import utc

__all__ = ["PccsClient", "PccsError", "PccsUnreachableError"]

_T = TypeVar("_T")
# Callers often configure a PCCS by its SGX API root (as Intel's QCNL does); the client wants the server.
_API_ROOT_SUFFIX = re.compile(r"/(sgx|tdx)/certification/v\d+$")
_HEX_DIGITS = frozenset(string.hexdigits.encode())


class PccsError(Exception):
    """Collateral could not be fetched: the PCCS refused, or answered with something unusable."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class PccsUnreachableError(PccsError):
    """No answer from the PCCS at all: connection refused, name resolution, TLS or a timeout."""


@dataclass(frozen=True)
class _Response:
    body: bytes
    issuer_chains: dict[str, str]  # lower-case header name -> URL-encoded PEM, as sent


class _SignedJson(NamedTuple):
    text: str  # the exact signed JSON text
    signature: str  # hex
    issuer_chain: str  # PEM


class PccsClient:
    """Fetches the collateral of quotes from the PCCS at `base_url`, caching it in `cache_dir`.

    `root_ca_crl_url` is where the root CA CRL comes from. By default that is the PCCS's
    `/sgx/certification/v4/rootcacrl`. Intel's PCS has no such endpoint, so its callers pass
    Intel's CRL URL. `verify_tls` is handed to httpx: an `ssl.SSLContext` trusts a PCCS with a
    private certificate. The collateral is signed, so TLS guards availability, not integrity.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: str | os.PathLike[str],
        *,
        root_ca_crl_url: str | None = None,
        timeout: float = 30.0,
        verify_tls: bool | ssl.SSLContext = True,
    ) -> None:
        server = _API_ROOT_SUFFIX.sub("", base_url.strip().rstrip("/"))
        if not _is_http_url(server):
            raise ValueError(f"PCCS URL must be http(s)://host[:port][/path], not {base_url!r}")
        self._server = server
        self._root_ca_crl_url = root_ca_crl_url or f"{server}/sgx/certification/v4/rootcacrl"
        self._cache_dir = Path(cache_dir)
        self._timeout = timeout
        self._verify_tls = verify_tls

    def fetch_collateral(self, quote: bytes, *, now: datetime | None = None) -> bytes:
        """The collateral for `quote` as JSON bytes. Fresh cache entries (at `now`) are reused."""
        tee, fmspc, pck_ca = _quote_identity(quote)
        at = utc(now) if now is not None else datetime.now(UTC)
        with httpx.Client(timeout=self._timeout, verify=self._verify_tls) as http:

            def get(url: str, decode: Callable[[_Response], tuple[_T, datetime]]) -> _T:
                return self._get(http, url, at, decode)

            sgx_api, tee_api = (
                f"{self._server}/sgx/certification/v4",
                f"{self._server}/{tee}/certification/v4",
            )
            pck_crl, pck_crl_issuer_chain = get(f"{sgx_api}/pckcrl?ca={pck_ca}", _pck_crl)
            root_ca_crl = get(self._root_ca_crl_url, _root_ca_crl)
            tcb_info = get(f"{tee_api}/tcb?fmspc={fmspc}", _tcb_info)
            qe_identity = get(f"{tee_api}/qe/identity", _qe_identity)
        collateral = {
            "pck_crl_issuer_chain": pck_crl_issuer_chain,
            "root_ca_crl": root_ca_crl.hex(),
            "pck_crl": pck_crl.hex(),
            "tcb_info_issuer_chain": tcb_info.issuer_chain,
            "tcb_info": tcb_info.text,
            "tcb_info_signature": tcb_info.signature,
            "qe_identity_issuer_chain": qe_identity.issuer_chain,
            "qe_identity": qe_identity.text,
            "qe_identity_signature": qe_identity.signature,
        }
        return json.dumps(collateral, indent=2).encode()

    def _get(
        self, http: httpx.Client, url: str, now: datetime, decode: Callable[[_Response], tuple[_T, datetime]]
    ) -> _T:
        """`decode` of the response for `url`: from the cache while fresh, else downloaded and cached."""
        cached = self._cached(url, now)
        response = cached if cached is not None else _download(http, url)
        try:
            value, next_update = decode(response)
        except ValueError as exc:
            raise PccsError(f"unusable answer from {url}: {exc}", url=url) from None
        if cached is None:
            self._store(url, response, next_update)
        return value

    def _entry_path(self, url: str) -> Path:
        return self._cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    def _cached(self, url: str, now: datetime) -> _Response | None:
        try:
            entry = json.loads(self._entry_path(url).read_bytes())
            if entry["url"] != url or now >= datetime.fromisoformat(entry["next_update"]):
                return None
            chains = {str(name): str(value) for name, value in entry["issuer_chains"].items()}
            return _Response(base64.b64decode(entry["body"], validate=True), chains)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no entry, or a damaged one: fetch again

    def _store(self, url: str, response: _Response, next_update: datetime) -> None:
        entry = {
            "url": url,
            "next_update": next_update.isoformat(),
            "issuer_chains": response.issuer_chains,
            "body": base64.b64encode(response.body).decode(),
        }
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        # Write then rename, so that a concurrent reader never sees half an entry.
        descriptor, temporary = tempfile.mkstemp(dir=self._cache_dir, suffix=".tmp")
        with os.fdopen(descriptor, "w") as file:
            json.dump(entry, file)
        os.replace(temporary, self._entry_path(url))


def _is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _quote_identity(quote: bytes) -> tuple[str, str, str]:
    """The TEE API (`sgx` or `tdx`), FMSPC and PCK CA (`processor` or `platform`) of a quote."""
    try:
        parsed = dcap_qvl.parse_quote(bytes(quote))
        return ("tdx" if parsed.is_tdx() else "sgx"), str(parsed.fmspc()).upper(), str(parsed.ca())
    except ValueError as exc:
        raise PccsError(f"cannot tell which collateral the quote needs: {exc}") from None


def _download(http: httpx.Client, url: str) -> _Response:
    try:
        reply = http.get(url)
    except httpx.TransportError as exc:
        raise PccsUnreachableError(f"no answer from {url}: {exc or type(exc).__name__}", url=url) from None
    except httpx.HTTPError as exc:
        raise PccsError(f"request to {url} failed: {exc}", url=url) from None
    if reply.status_code != httpx.codes.OK:
        raise PccsError(f"{url} answered HTTP {reply.status_code}: {reply.text[:200]}", url=url)
    chains = {name: value for name, value in reply.headers.items() if name.endswith("-issuer-chain")}
    return _Response(reply.content, chains)


def _pck_crl(response: _Response) -> tuple[tuple[bytes, str], datetime]:
    crl, next_update = _crl(response.body)
    return (crl, _issuer_chain(response, ("sgx-pck-crl-issuer-chain",))), next_update


def _root_ca_crl(response: _Response) -> tuple[bytes, datetime]:
    return _crl(response.body)


def _tcb_info(response: _Response) -> tuple[_SignedJson, datetime]:
    # v4 names the header TCB-Info-Issuer-Chain; v3, and PCCSs that kept its name, SGX-TCB-Info-...
    return _signed_json(response, "tcbInfo", ("tcb-info-issuer-chain", "sgx-tcb-info-issuer-chain"))


def _qe_identity(response: _Response) -> tuple[_SignedJson, datetime]:
    return _signed_json(response, "enclaveIdentity", ("sgx-enclave-identity-issuer-chain",))


def _crl(body: bytes) -> tuple[bytes, datetime]:
    """DER and nextUpdate of a CRL sent as PEM (PCS), DER, or hex text (PCCS's root CA CRL)."""
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        crl = x509.load_pem_x509_crl(text)
    elif text and len(text) % 2 == 0 and _HEX_DIGITS.issuperset(text):
        crl = x509.load_der_x509_crl(bytes.fromhex(text.decode()))
    else:
        crl = x509.load_der_x509_crl(body)
    if crl.next_update_utc is None:
        raise ValueError("the CRL has no nextUpdate")
    return crl.public_bytes(Encoding.DER), crl.next_update_utc


def _signed_json(response: _Response, key: str, chain_headers: Iterable[str]) -> tuple[_SignedJson, datetime]:
    """`{"<key>": {...}, "signature": "<hex>"}`, keeping the exact text of the signed object."""
    members = _json_object_members(response.body.decode())
    if key not in members or "signature" not in members:
        raise ValueError(f"expected a JSON object with {key!r} and 'signature'")
    content, text = members[key]
    signature = members["signature"][0]
    if not isinstance(content, dict) or not isinstance(signature, str):
        raise ValueError(f"{key!r} must be an object and 'signature' a hex string")
    bytes.fromhex(signature)
    next_update = datetime.fromisoformat(str(content.get("nextUpdate")))
    return _SignedJson(text, signature.lower(), _issuer_chain(response, chain_headers)), utc(next_update)


def _issuer_chain(response: _Response, names: Iterable[str]) -> str:
    for name in names:
        if name in response.issuer_chains:
            return unquote(response.issuer_chains[name])
    raise ValueError(f"the {' or '.join(names)} header is missing")


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_object_members(text: str) -> dict[str, tuple[Any, str]]:
    """Each member of the JSON object `text`: its value, and the exact text it was parsed from.

    A signature covers the bytes of the signed object as sent, so it must not be re-serialized.
    """
    decoder = json.JSONDecoder()
    members: dict[str, tuple[Any, str]] = {}

    def skip(index: int) -> int:
        match = _WHITESPACE.match(text, index)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    def expect(index: int, token: str) -> int:
        if text[index : index + 1] != token:
            raise ValueError(f"expected {token!r} at offset {index} of the JSON")
        return skip(index + 1)

    index = expect(skip(0), "{")
    while text[index : index + 1] != "}":
        if members:
            index = expect(index, ",")
        name, index = decoder.raw_decode(text, index)
        if not isinstance(name, str):
            raise ValueError(f"object member name at offset {index} is not a string")
        start = expect(skip(index), ":")
        value, end = decoder.raw_decode(text, start)
        members[name] = (value, text[start:end])
        index = skip(end)
    if text[index + 1 :].strip():
        raise ValueError("data after the JSON object")
    return members
