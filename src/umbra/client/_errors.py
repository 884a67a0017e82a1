"""The one exception type the client raises, and the stable codes it carries.

Foreign exceptions (httpx, cryptography, cbor2) never leave the client: they are translated at
the edge into `UmbraError` with a code a script can branch on. Messages name what was wrong and
what to do; they never carry plaintext inputs, outputs or secrets, except the caller's own
contract error text, which the caller decrypted and is entitled to see.
"""

from __future__ import annotations

__all__ = ["UmbraError", "VerificationError"]


class UmbraError(Exception):
    """A refusal or failure, with a stable `code` (the node's error code where there is one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class VerificationError(UmbraError):
    """A result, reply or key that does not prove what it claims: never use its content.

    Codes: `bad_signature`, `unregistered_worker`, `worker_not_attested`, `code_hash_mismatch`,
    `commitment_mismatch`, `cannot_open`, `bad_reply`, `bad_contract_key`, `bad_evidence`.
    """
