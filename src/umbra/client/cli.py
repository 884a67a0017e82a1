"""The `umbra` command. Every subcommand takes --json, --node and --key after its name.

With --json a command prints exactly one JSON object; on failure it exits 1 and prints
{"error": {"code", "message"}}. Usage errors exit 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from umbra import codec, crypto
from umbra.client._attest_cli import attest_app
from umbra.client._node import NodeClient, UmbraError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Umbra confidential-compute network")
app.add_typer(attest_app, name="attest")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
NodeOpt = Annotated[
    str | None, typer.Option("--node", help="node URL [$UMBRA_NODE or http://127.0.0.1:9944]")
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="key file [$UMBRA_KEY]")]

_console = Console()


def _node_url(node: str | None) -> str:
    return node or os.environ.get("UMBRA_NODE") or "http://127.0.0.1:9944"


def _key(key: str | None) -> crypto.SigningKey:
    path = key or os.environ.get("UMBRA_KEY")
    if not path:
        raise UmbraError("no_key", "no key given: pass --key FILE or set UMBRA_KEY")
    try:
        return crypto.load_signing_key(path)
    except crypto.KeyFileError as exc:
        raise UmbraError("bad_key", str(exc)) from None


def _address(text: str) -> bytes:
    try:
        return codec.from_hex(text, length=32, what="address")
    except codec.CodecError as exc:
        raise UmbraError("bad_address", str(exc)) from None


def _fail(as_json: bool, code: str, message: str, exit_code: int = 1) -> NoReturn:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        _console.print(f"[red]error[/red] ({code}): {message}", highlight=False)
    raise typer.Exit(exit_code)


def _emit(as_json: bool, result: dict[str, Any], title: str | None = None) -> None:
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        table.add_row(str(key), json.dumps(value) if isinstance(value, dict | list) else str(value))
    _console.print(table)


def _run(as_json: bool, action: Callable[[], dict[str, Any]], title: str | None = None) -> None:
    try:
        result = action()
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message, 2 if exc.code == "usage" else 1)
    _emit(as_json, result, title)


# ---- accounts and chain ---------------------------------------------------------------------------
@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="where to write the new key file")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Create a new account key."""

    def action() -> dict[str, Any]:
        if out.exists():
            raise UmbraError("exists", f"{out} already exists; refusing to overwrite a key")
        new = crypto.SigningKey.generate()
        crypto.save_signing_key(out, new)
        return {"address": codec.to_hex(new.public_key), "file": str(out)}

    _run(as_json, action)


@app.command()
def transfer(
    to: Annotated[str, typer.Argument(help="destination address (0x-hex)")],
    amount: Annotated[int, typer.Argument(help="amount in the smallest unit (>= 1)")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Transfer funds; waits until the tx is included."""

    def action() -> dict[str, Any]:
        if amount < 1:
            raise UmbraError("bad_amount", "amount must be at least 1")
        signer = _key(key)
        with NodeClient(_node_url(node)) as client:
            receipt = client.call(signer, "balances", "transfer", to=_address(to), amount=amount)
        return {"tx_hash": receipt["tx_hash"], "tx": receipt["tx"], "block": receipt["block"]}

    _run(as_json, action)


@app.command()
def balance(address: str, as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Show an account's balances."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            acct = client.account(_address(address))
        return {
            "address": acct["address"],
            "free": acct["free"],
            "reserved": acct["reserved"],
            "staked": acct["staked"],
        }

    _run(as_json, action)


@app.command()
def status(as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Show the chain's head and health, and every worker with its stake and reputation."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            found = client.status()
            workers: list[dict[str, Any]] = []
            while True:  # the explorer's list is paginated
                page = client.get("/explorer/api/workers", offset=len(workers))
                workers += page["workers"]
                if not page["workers"] or len(workers) >= int(page["total"]):
                    break
        found["workers"] = [{name: w.get(name) for name in _STATUS_WORKER_FIELDS} for w in workers]
        return found

    try:
        result = action()
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message)
    if as_json:
        print(json.dumps(result))
        return
    _emit(False, {k: v for k, v in result.items() if k != "workers"}, "chain status")
    table = Table(title="workers")
    for name in _STATUS_WORKER_FIELDS:
        table.add_column(name)
    for w in result["workers"]:
        table.add_row(*("—" if w[name] is None else str(w[name]) for name in _STATUS_WORKER_FIELDS))
    _console.print(table)


_STATUS_WORKER_FIELDS = ("id", "role", "platform", "status", "attested", "stake", "reputation")


@app.command()
def block(
    height: Annotated[int | None, typer.Argument(help="block height (default: the head)")] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show a block header."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            found = client.block("latest" if height is None else height)
        return {k: v for k, v in found.items() if k not in ("events", "receipts")}

    _run(as_json, action, "block")


# ---- contracts -------------------------------------------------------------------------------------
ArgsOpt = Annotated[
    str | None, typer.Option("--args", help="keyword arguments as a JSON object, like '{\"by\": 2}'")
]


@app.command()
def deploy(
    file: Annotated[Path, typer.Argument(help="contract source (a Python module)")],
    init: Annotated[str | None, typer.Option("--init", help="init keyword arguments (JSON object)")] = None,
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", help="manifest (JSON object: name, description, http_allowlist)"),
    ] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Deploy a confidential contract; waits for its verified key and its init job."""
    from umbra.client import _contract_cli

    _run(
        as_json,
        lambda: _contract_cli.deploy(_node_url(node), _key(key), file, init, manifest, as_json),
        "deployed",
    )


@app.command()
def call(
    contract: Annotated[str, typer.Argument(help="contract id (0x-hex)")],
    method: Annotated[str, typer.Argument(help="a @command of the contract")],
    args: ArgsOpt = None,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, max=7, help="distinct workers that must agree")
    ] = 1,
    value: Annotated[int, typer.Option("--value", min=0, help="amount moved to the contract's account")] = 0,
    distinct: Annotated[
        str, typer.Option("--distinct", help="replicas on distinct: none|operators|tee_types")
    ] = "none",
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a command on chain; waits for the result and verifies it."""
    from umbra.client import _contract_cli

    _run(
        as_json,
        lambda: _contract_cli.call(
            _node_url(node), _key(key), contract, method, args, replicas, value, distinct, as_json
        ),
        method,
    )


@app.command()
def query(
    contract: Annotated[str, typer.Argument(help="contract id (0x-hex)")],
    method: Annotated[str, typer.Argument(help="a @query of the contract")],
    args: ArgsOpt = None,
    worker: Annotated[str | None, typer.Option("--worker", help="ask this worker (id)")] = None,
    min_height: Annotated[
        int | None, typer.Option("--min-height", min=0, help="read state at least this new [chain head]")
    ] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a read-only query on a worker, off chain, signed by --key (that account is ctx.caller)."""
    from umbra.client import _contract_cli

    _run(
        as_json,
        lambda: _contract_cli.query(
            _node_url(node), _key(key), contract, method, args, worker, min_height, as_json
        ),
        method,
    )


@app.command("upload-secret")
def upload_secret(
    contract: Annotated[str, typer.Argument(help="contract id (0x-hex)")],
    name: Annotated[str, typer.Argument(help="the secret's name (ctx.secret(name))")],
    file: Annotated[
        Path | None, typer.Option("--file", help="read the secret from FILE (- for stdin)")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="the secret as text")] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Seal a secret to the contract's key and store it on chain (owner only)."""
    from umbra.client import _contract_cli

    _run(
        as_json,
        lambda: _contract_cli.upload_secret(
            _node_url(node), _key(key), contract, name, _contract_cli.read_secret(file, text), as_json
        ),
        "secret uploaded",
    )


# ---- staking ---------------------------------------------------------------------------------------
WorkerArg = Annotated[str, typer.Argument(help="worker id (0x-hex)")]


@app.command()
def stake(
    worker: WorkerArg,
    amount: Annotated[int, typer.Argument(help="amount to stake, smallest unit (>= 1)")],
    commission: Annotated[
        int | None,
        typer.Option("--commission", min=0, max=1_000_000, help="pool commission, parts per million"),
    ] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Stake behind your worker: opens its pool if needed (operator only), then delegates."""
    from umbra.client import _staking_cli

    _run(
        as_json,
        lambda: _staking_cli.stake(_node_url(node), _key(key), _address(worker), amount, commission),
        "staked",
    )


@app.command()
def delegate(
    worker: WorkerArg,
    amount: Annotated[int, typer.Argument(help="amount to delegate, smallest unit (>= 1)")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Delegate to a worker's stake pool; you receive pool shares."""
    from umbra.client import _staking_cli

    _run(
        as_json,
        lambda: _staking_cli.delegate(_node_url(node), _key(key), _address(worker), amount),
        "delegated",
    )


@app.command()
def unbond(
    worker: WorkerArg,
    shares: Annotated[int, typer.Argument(help="pool shares to queue for withdrawal (>= 1)")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Queue pool shares for withdrawal; they are paid once the unbonding delay has passed."""
    from umbra.client import _staking_cli

    _run(
        as_json, lambda: _staking_cli.unbond(_node_url(node), _key(key), _address(worker), shares), "unbonded"
    )


@app.command()
def withdraw(worker: WorkerArg, as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Pay out your matured withdrawals from a pool now (the chain also pays them every block)."""
    from umbra.client import _staking_cli

    _run(as_json, lambda: _staking_cli.withdraw(_node_url(node), _key(key), _address(worker)), "withdrawn")


@app.command()
def pool(worker: WorkerArg, as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Show a worker's stake pool: stake, shares, commission, queue, reputation and your shares."""
    from umbra.client import _staking_cli

    def action() -> dict[str, Any]:
        me = _key(key).public_key if key or os.environ.get("UMBRA_KEY") else None
        return _staking_cli.pool(_node_url(node), _address(worker), me)

    _run(as_json, action, "pool")


@app.command()
def rewards(
    address: Annotated[
        str | None, typer.Argument(help="a worker id, or an account (its pools) [the --key account]")
    ] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show the rewards and slashes of a worker's pool, or of every pool an account is in."""
    from umbra.client import _staking_cli

    def action() -> dict[str, Any]:
        who = _address(address) if address is not None else _key(key).public_key
        return _staking_cli.rewards(_node_url(node), who)

    _run(as_json, action, "rewards")


# ---- processes -------------------------------------------------------------------------------------
@app.command("node")
def node_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where the chain database lives")] = Path(
        "./.umbra-node"
    ),
    port: Annotated[int, typer.Option("--port")] = 9944,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    genesis: Annotated[
        Path | None, typer.Option("--genesis", help="genesis file (CBOR) for a new chain")
    ] = None,
    sequencer_key: Annotated[
        Path | None, typer.Option("--sequencer-key", help="author blocks with this key")
    ] = None,
    follow: Annotated[str | None, typer.Option("--follow", help="follow the node at this URL")] = None,
    ordering: Annotated[
        str, typer.Option("--ordering", help="local (sequencer or follower) or evm (derive from an inbox)")
    ] = "local",
    evm_url: Annotated[str | None, typer.Option("--evm-url", help="EVM JSON-RPC URL (evm ordering)")] = None,
    inbox: Annotated[
        str | None, typer.Option("--inbox", help="inbox contract address (evm ordering)")
    ] = None,
    confirmations: Annotated[
        int, typer.Option("--confirmations", min=0, help="EVM blocks on top before one is derived")
    ] = 2,
    evm_key: Annotated[
        Path | None,
        typer.Option(
            "--evm-key", help="hex private key file of a funded EVM account: relay txs to the inbox"
        ),
    ] = None,
    node_key: Annotated[
        Path | None,
        typer.Option(
            "--node-key", help="key that attests derived blocks (evm) [DATA_DIR/node.key, made once]"
        ),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="run a full integrity check and exit")] = False,
    blob_quota_mb: Annotated[
        int, typer.Option("--blob-quota-mb", min=0, help="what PUT /blobs may store in all, MiB")
    ] = 1024,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a node: the local sequencer (--sequencer-key), a follower (--follow URL), or one that
    derives its chain from an EVM inbox (--ordering evm --evm-url URL --inbox ADDR [--evm-key FILE])."""
    from umbra.node.main import check_store, run_node

    if check:
        problems = check_store(data_dir)
        if as_json:
            print(json.dumps({"ok": not problems, "problems": problems}))
        else:
            _console.print("[green]database is healthy[/green]" if not problems else "\n".join(problems))
        raise typer.Exit(0 if not problems else 1)
    evm_settings = None
    if ordering == "evm":
        if evm_url is None or inbox is None:
            _fail(as_json, "usage", "--ordering evm needs --evm-url URL and --inbox ADDRESS", 2)
        if sequencer_key is not None or follow is not None:
            _fail(as_json, "usage", "--ordering evm derives blocks: no --sequencer-key or --follow", 2)
        evm_settings = _evm_settings(as_json, evm_url, inbox, confirmations, evm_key, node_key)
    elif ordering != "local":
        _fail(as_json, "usage", "--ordering is local or evm", 2)
    elif (sequencer_key is None) == (follow is None):
        _fail(as_json, "usage", "give exactly one of --sequencer-key (author blocks) or --follow URL", 2)
    try:
        run_node(
            data_dir=data_dir,
            host=host,
            port=port,
            genesis_path=genesis,
            sequencer_key_path=sequencer_key,
            follow_url=follow,
            evm=evm_settings,
            blob_quota_bytes=blob_quota_mb << 20,
        )
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message)


def _evm_settings(
    as_json: bool, url: str, inbox: str, confirmations: int, key_file: Path | None, node_key: Path | None
) -> Any:
    from umbra.ordering.evm import EvmSettings
    from umbra.ordering.evm_rpc import load_evm_key, parse_address

    try:
        address = parse_address(inbox)
        secret = None if key_file is None else load_evm_key(key_file)
        attester = None if node_key is None else crypto.load_signing_key(node_key)
    except ValueError as exc:  # KeyFileError is a ValueError too
        _fail(as_json, "usage", str(exc), 2)
    return EvmSettings(
        url=url, inbox=address, confirmations=confirmations, relayer_key=secret, node_key=attester
    )


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("./.umbra-dev"),
    port: Annotated[int, typer.Option("--port")] = 9944,
    workers: Annotated[int, typer.Option("--workers", min=0)] = 3,
    fresh: Annotated[bool, typer.Option("--fresh", help="wipe the data dir first")] = False,
    ordering: Annotated[str, typer.Option("--ordering", help="local|evm")] = "local",
    nodes: Annotated[int, typer.Option("--nodes", min=1)] = 1,
    tee_mix: Annotated[
        str, typer.Option("--tee-mix", help="TEE types the sim workers present, round-robin")
    ] = "sgx,tdx,sev-snp",
    worker_faults: Annotated[
        list[str] | None,
        typer.Option("--worker-fault", help="I=FAULT: start worker I with `umbra worker --fault FAULT`"),
    ] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a whole local network in the foreground; writes DIR/dev.json when ready."""
    from umbra.node.dev import DevNetwork
    from umbra.tee._sim import PRESENTED_TYPES
    from umbra.worker.host import HostError, check_fault

    if ordering not in ("local", "evm"):
        _fail(as_json, "usage", "--ordering is local or evm", 2)
    mix = tuple(t.strip() for t in tee_mix.split(","))
    if not all(t in PRESENTED_TYPES for t in mix):
        _fail(as_json, "usage", f"--tee-mix takes types from {', '.join(PRESENTED_TYPES)}", 2)
    faults: dict[int, str] = {}
    for spec in worker_faults or []:
        index, _, fault = spec.partition("=")
        if not index.isdigit() or int(index) >= workers:
            _fail(
                as_json, "usage", f"--worker-fault {spec!r}: I=FAULT with I a worker index below {workers}", 2
            )
        try:
            check_fault(fault)
        except HostError as exc:
            _fail(as_json, "usage", exc.message, 2)
        faults[int(index)] = fault
    network = DevNetwork(
        data_dir,
        port=port,
        workers=workers,
        fresh=fresh,
        ordering=ordering,
        nodes=nodes,
        tee_mix=mix,
        worker_faults=faults,
    )
    try:
        code = network.run()
    except RuntimeError as exc:
        _fail(as_json, "dev_failed", str(exc))
    raise typer.Exit(code)


# ---- TEE hosts -----------------------------------------------------------------------------------
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="sealed keys and the simulated CPU live here")]
HostPortOpt = Annotated[int, typer.Option("--port", help="HTTP port for sealed queries", min=1, max=65535)]
TeeTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--tee-type",
        help="sim|sgx|tdx|sev-snp|nitro: the type a sim worker presents (or the hardware expected)",
    ),
]
SimRootOpt = Annotated[
    Path | None,
    typer.Option("--sim-root", help="the dev network's sim root (issues this machine's simulated CPU)"),
]
SealFailureOpt = Annotated[
    str,
    typer.Option("--on-seal-failure", help="fail|new-identity: what to do when sealed keys do not open"),
]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="public URL registered on chain")]
HostOpt = Annotated[str, typer.Option("--host", help="address to listen on")]
SimMeasurementOpt = Annotated[str | None, typer.Option("--sim-measurement", hidden=True)]
SimDebugOpt = Annotated[bool, typer.Option("--sim-debug", hidden=True)]
FaultOpt = Annotated[
    str | None,
    typer.Option(
        "--fault",
        help="chaos tests: stall | wrong-output (sim only) | crash-after:N; adversarial tests (a malicious "
        "host): forge-signature | steal-job | replay-result | stale-state | forge-blocks",
    ),
]


def _run_tee_host(
    role: str,
    *,
    as_json: bool,
    node: str | None,
    key: str | None,
    data_dir: Path,
    port: int,
    host: str,
    endpoint: str | None,
    tee_type: str | None,
    sim_root: Path | None,
    on_seal_failure: str,
    sim_measurement: str | None,
    sim_debug: bool,
    fault: str | None,
) -> None:
    from umbra.worker.main import HostOptions, run_host

    if on_seal_failure not in ("fail", "new-identity"):
        _fail(as_json, "usage", "--on-seal-failure is fail or new-identity", 2)
    hooks: tuple[Any, ...] = ()
    if role == "gatekeeper":
        from umbra.gatekeeper import gatekeeper_duties

        hooks = (gatekeeper_duties,)
    # --node may list several nodes (comma-separated): txs go to the first; on an evm-ordered chain
    # the core also needs the others' attestations of each block.
    urls = [u.strip() for u in _node_url(node).split(",") if u.strip()]
    try:
        options = HostOptions(
            node_url=urls[0],
            attest_urls=tuple(urls[1:]),
            operator=_key(key),
            data_dir=data_dir,
            role=role,
            host=host,
            port=port,
            endpoint=endpoint,
            tee_type=tee_type,
            sim_root=sim_root,
            sim_measurement=sim_measurement,
            sim_debug=sim_debug,
            on_seal_failure=on_seal_failure,
            fault=fault,
        )
        run_host(options, hooks=hooks)
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message, 2 if exc.code == "usage" else 1)


def _tee_host_command(role: str, default_dir: str, default_port: int, doc: str) -> Callable[..., None]:
    """`umbra worker` and `umbra gatekeeper` take the same options; only the defaults differ."""

    def command(
        data_dir: DataDirOpt = Path(default_dir),
        port: HostPortOpt = default_port,
        host: HostOpt = "127.0.0.1",
        endpoint: EndpointOpt = None,
        tee_type: TeeTypeOpt = None,
        sim_root: SimRootOpt = None,
        on_seal_failure: SealFailureOpt = "fail",
        sim_measurement: SimMeasurementOpt = None,
        sim_debug: SimDebugOpt = False,
        fault: FaultOpt = None,
        as_json: JsonOpt = False,
        node: NodeOpt = None,
        key: KeyOpt = None,
    ) -> None:
        _run_tee_host(
            role,
            as_json=as_json,
            node=node,
            key=key,
            data_dir=data_dir,
            port=port,
            host=host,
            endpoint=endpoint,
            tee_type=tee_type,
            sim_root=sim_root,
            on_seal_failure=on_seal_failure,
            sim_measurement=sim_measurement,
            sim_debug=sim_debug,
            fault=fault,
        )

    command.__doc__ = doc
    return command


app.command("worker")(
    _tee_host_command(
        "worker",
        "./.umbra-worker",
        9955,
        "Run a TEE worker: register (--key is the operator account), follow the chain, run jobs, answer queries.",
    )
)
app.command("gatekeeper")(
    _tee_host_command(
        "gatekeeper",
        "./.umbra-gatekeeper",
        9956,
        "Run a gatekeeper: a worker that holds the master key, hands it over and publishes contract keys.",
    )
)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
