"""Vendor trust anchors shipped as package data, each pinned by SHA-256.

A root whose bytes do not match its pin is refused at load time: a tampered install must not
silently widen what Umbra trusts. `--root` (or `Endorsements.root`) may replace a root, for tests.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

__all__ = ["ROOT_PINS", "RootPinError", "load_root"]

# file name under umbra/tee/roots -> SHA-256 of its exact bytes
ROOT_PINS: dict[str, str] = {
    "intel_sgx_root_ca.der": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "aws_nitro_enclaves_root_g1.pem": "6eb9688305e4bbca67f44b59c29a0661ae930f09b5945b5d1d9ae01125c8d6c0",
    "nvidia_device_identity_ca.pem": "6e6e91e84068cb7de2c715ca73d6df168a16b23d96a895b42e553b297a471bfc",
    # AMD: each file holds ASK (or ASVK for VLEK) then ARK, per product.
    "amd/ask_ark_milan.pem": "22e62f8d2c21a156470145fc75f7b5a377cb053ced3e97f0bd3f8d8ca5941ce6",
    "amd/ask_ark_milan_vlek.pem": "3098f7e90ee7049b8cf116448d1bdf33b08847b4250bd99507cf73b5c49d3467",
    "amd/ask_ark_genoa.pem": "e6ecc853fa56d3170a624d40851f98a1036f974b50204ea69e6aec91d777aca3",
    "amd/ask_ark_genoa_vlek.pem": "95f8b0deab936fe5d44a7cd6ed32590ad360581da2858a27dc2e59ac6eacb2e8",
    "amd/ask_ark_turin_vcek.pem": "cc9a52fbed3fbc6e4a0a50149a541a75938f975658909c2a6084767829b36e85",
    "amd/ask_ark_turin_vlek.pem": "5928f39615a10790e4c3d985fbe5b025524eab50c0801c2b69d2031e476cdfe5",
}


class RootPinError(RuntimeError):
    """A shipped root certificate does not match its pinned hash."""


@cache
def load_root(name: str) -> bytes:
    """The bytes of a pinned root (PEM or DER, as shipped), verified against its pin."""
    pin = ROOT_PINS.get(name)
    if pin is None:
        raise KeyError(f"no pinned root named {name!r}")
    data = resources.files("umbra.tee").joinpath("roots", *name.split("/")).read_bytes()
    if hashlib.sha256(data).hexdigest() != pin:
        raise RootPinError(f"pinned root {name} does not match its SHA-256 pin; the install is tampered")
    return data
