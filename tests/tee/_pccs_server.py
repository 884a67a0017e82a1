"""A PCCS stand-in on 127.0.0.1 that serves one collateral file through the v4 certification API.

Responses use the real formats. The PCK CRL comes as PEM (Intel's default) or DER, the root CA CRL
as hex text (as Intel's PCCS sends it), and TCB Info and QE Identity as `{"tcbInfo"|"enclaveIdentity":
<signed JSON>, "signature": "<hex>"}`. The issuer chains travel in URL-encoded PEM headers. Every
request path is recorded, so tests can tell a cache hit from a fetch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

_Route = tuple[bytes, dict[str, str]]  # body, headers


class FakePccs:
    """Serves `collateral` (the JSON of a collateral file) until the `with` block ends."""

    def __init__(self, collateral: Mapping[str, str], *, pck_crl_encoding: str = "pem") -> None:
        self.requests: list[str] = []
        self._collateral = collateral
        self._pck_crl_encoding = pck_crl_encoding
        tcb_info = json.loads(collateral["tcb_info"])
        self.tee = tcb_info["id"].lower()  # "sgx" or "tdx"
        self.fmspc = tcb_info["fmspc"].upper()
        pck_ca = x509.load_pem_x509_certificates(collateral["pck_crl_issuer_chain"].encode())[0]
        common_name = str(pck_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        self.pck_ca = "platform" if "Platform" in common_name else "processor"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # A short poll interval, so that shutting down at the end of each test takes no time.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-pccs", daemon=True
        )
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def __enter__(self) -> FakePccs:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def route(self, path: str, query: Mapping[str, list[str]]) -> _Route | None:
        collateral = self._collateral
        sgx_api, tee_api = "/sgx/certification/v4", f"/{self.tee}/certification/v4"
        if path == f"{sgx_api}/pckcrl" and query.get("ca") == [self.pck_ca]:
            crl = x509.load_der_x509_crl(bytes.fromhex(collateral["pck_crl"]))
            encoding = Encoding.PEM if self._pck_crl_encoding == "pem" else Encoding.DER
            return crl.public_bytes(encoding), {
                "SGX-PCK-CRL-Issuer-Chain": quote(collateral["pck_crl_issuer_chain"], safe="")
            }
        if path == f"{sgx_api}/rootcacrl":
            return collateral["root_ca_crl"].encode(), {}
        if path == f"{tee_api}/tcb" and [fmspc.upper() for fmspc in query.get("fmspc", [])] == [self.fmspc]:
            # Intel's v4 API names this header TCB-Info-Issuer-Chain; older PCCSs kept the SGX- name.
            header = "TCB-Info-Issuer-Chain" if self.tee == "tdx" else "SGX-TCB-Info-Issuer-Chain"
            tcb = f'{{"tcbInfo":{collateral["tcb_info"]},"signature":"{collateral["tcb_info_signature"]}"}}'
            return tcb.encode(), {header: quote(collateral["tcb_info_issuer_chain"], safe="")}
        if path == f"{tee_api}/qe/identity":
            identity = (
                f'{{"enclaveIdentity":{collateral["qe_identity"]},'
                f'"signature":"{collateral["qe_identity_signature"]}"}}'
            )
            return identity.encode(), {
                "SGX-Enclave-Identity-Issuer-Chain": quote(collateral["qe_identity_issuer_chain"], safe="")
            }
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        pccs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pccs.requests.append(self.path)
                target = urlsplit(self.path)
                found = pccs.route(target.path, parse_qs(target.query))
                body, headers = found if found is not None else (b'{"error":"not found"}', {})
                self.send_response(HTTPStatus.OK if found is not None else HTTPStatus.NOT_FOUND)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        return Handler
