"""The Umbra client SDK: deploy confidential contracts, call and query them, and verify every result.

    from umbra.client import Client

    with Client("http://127.0.0.1:9944", key="alice.key") as umbra:
        counter = umbra.deploy(Path("counter.py"), init={"start": 5})
        result = umbra.call(counter.contract_id, "add", {"by": 2})   # verified, or it raises
        print(result.output, umbra.query(counter.contract_id, "get").output)

It also reads and moves funds and reads public contract data: `balance`, `transfer`,
`contract_account` (where a contract's funds are) and `contract_events` (what it emitted).
`AsyncClient` has the same methods, awaited. Every failure is an `UmbraError` with a stable
`code`; a result that fails a check raises `VerificationError` and is never returned.
"""

from umbra.client._client import AsyncClient, Client, dev_keys
from umbra.client._errors import UmbraError, VerificationError
from umbra.client._types import CallResult, ChainEvent, ContractEvent, Deployment, QueryResult, Settings

__all__ = [
    "AsyncClient",
    "CallResult",
    "ChainEvent",
    "Client",
    "ContractEvent",
    "Deployment",
    "QueryResult",
    "Settings",
    "UmbraError",
    "VerificationError",
    "dev_keys",
]
