"""The explorer's server side, in process: pages, search, JSON API, re-verification, and that
nothing confidential is ever rendered. One block per tx, so every assertion is deterministic."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.explorer.harness import COUNTER, LocalChain, Served, SimNet
from umbra import codec
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig

pytestmark = pytest.mark.timeout(120)


class Env:
    def __init__(self, tmp: Path) -> None:
        self.sim = SimNet.create()
        self.node = Node(NodeConfig(data_dir=tmp, sequencer_key=self.sim.sequencer), self.sim.genesis)
        self.chain = LocalChain(self.node, self.sim.sequencer)
        self.served = Served(create_app(self.node))
        self.client = httpx.Client(base_url=self.served.url, follow_redirects=False, timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params or None)

    def close(self) -> None:
        self.client.close()
        self.served.stop()
        self.node.stop()
        self.node.store.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("explorer-node"))
    try:
        # Before any worker: the first view still renders, and says so.
        page = e.get("/explorer")
        assert page.status_code == 200 and "No workers are registered" in page.text
        assert "no staking pools" in e.get("/explorer/api/fragments/staking").text
        e.sim.setup(e.chain)
        e.sim.run_job(e.chain)
        e.chain.tick()
        yield e
    finally:
        e.close()


def hexes(env: Env) -> list[str]:
    return [codec.to_hex(w.public_key) for w in [env.sim.gatekeeper, *env.sim.workers]]


def test_first_view_is_server_rendered_with_full_worker_ids_and_attestation(env: Env) -> None:
    reply = env.get("/explorer")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    text = reply.text
    for wid in hexes(env):
        assert wid in text, f"worker {wid} is not in the first view"
    workers = text[text.index('id="workers"') : text.index('id="keys"')]
    assert workers.count("attested") >= 3
    # Self-contained: same-origin assets only, no inline script, a strict CSP.
    assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert re.findall(r"<script[^>]*>", text) == ['<script src="/explorer/static/explorer.js" defer>']


def test_every_section_renders_and_unknown_sections_are_refused(env: Env) -> None:
    for name in ("summary", "workers", "keys", "blocks", "txs", "contracts", "jobs", "staking"):
        reply = env.get(f"/explorer/api/fragments/{name}")
        assert reply.status_code == 200, (name, reply.text[:300])
    assert env.get("/explorer/api/fragments/nope").status_code == 404
    wid = hexes(env)[1]
    assert wid in env.get("/explorer/api/fragments/worker", id=wid).text
    assert env.get("/explorer/api/fragments/worker", id="0x" + "00" * 32).status_code == 404


def test_search_finds_heights_hashes_workers_contracts_jobs_and_addresses(env: Env) -> None:
    store = env.node.store
    head = store.head()
    tx_hash = codec.to_hex(store.txs_of(env.sim.alice.public_key, 1)[0].tx_hash)
    contract = codec.to_hex(env.sim.contract or b"")
    job = codec.to_hex(env.sim.jobs[0])
    cases = {
        "3": "/explorer/block/3",
        f"#{head.height}": f"/explorer/block/{head.height}",
        codec.to_hex(head.hash): f"/explorer/block/{codec.to_hex(head.hash)}",
        tx_hash: f"/explorer/tx/{tx_hash}",
        tx_hash[2:].upper(): f"/explorer/tx/{tx_hash}",
        hexes(env)[1]: f"/explorer/worker/{hexes(env)[1]}",
        contract: f"/explorer/contract/{contract}",
        job: f"/explorer/job/{job}",
        codec.to_hex(env.sim.alice.public_key): f"/explorer/account/{codec.to_hex(env.sim.alice.public_key)}",
    }
    for query, location in cases.items():
        reply = env.get("/explorer/search", q=query)
        assert reply.status_code == 303, (query, reply.text[:200])
        assert reply.headers["location"] == location
        assert env.get(location).status_code == 200, location
        assert env.get("/explorer/api/search", q=query).json()["url"] == location
    for miss in ("999999", "0x" + "ab" * 32, "hello", "", "0x1234", "<script>alert(1)</script>"):
        page = env.get("/explorer/search", q=miss)
        assert page.status_code == 200 and "Nothing matches" in page.text, miss
        assert "<script>alert" not in page.text
        assert env.get("/explorer/api/search", q=miss).status_code == 404


def test_detail_pages_show_what_they_are_about(env: Env) -> None:
    contract = codec.to_hex(env.sim.contract or b"")
    page = env.get(f"/explorer/contract/{contract}").text
    assert codec.to_hex(codec.sha256(COUNTER)) in page  # the code hash
    assert "class Counter(Contract)" in page and "matches code" in page  # the code itself
    assert 'id="state-version">1<' in page  # one settled job
    assert "api_key" in page  # the secret's name, never its bytes
    job = codec.to_hex(env.sim.jobs[0])
    job_page = env.get(f"/explorer/job/{job}").text
    for step in ("requested", "assigned", "result", "settled"):
        assert f'class="step {step}"' in job_page
    assert (
        codec.to_hex(env.sim.workers[0].public_key) in job_page
        or codec.to_hex(env.sim.workers[1].public_key) in job_page
    )
    block = env.get("/explorer/block/2").text
    assert "registry.register_worker" in block and "WorkerRegistered" in block
    keys = env.get("/explorer/api/keys").json()
    assert keys["epoch"] == 0 and keys["masters"][0]["handovers"] == 2
    assert keys["gatekeepers"][0]["holds_master"] is True
    staking = env.get("/explorer/api/staking").json()
    assert staking["pools"][0]["stake"] == 5000 and staking["pools"][0]["worker"] == hexes(env)[1]
    jobs = env.get("/explorer/api/jobs").json()["jobs"]
    assert jobs[0]["status"] == "settled" and jobs[0]["latency_ms"] is not None
    assert [s["what"] for s in jobs[0]["steps"]] == ["requested", "assigned", "result", "settled"]
    workers = env.get("/explorer/api/workers").json()
    assert workers["total"] == 3 and all(
        w["online"] and w["attestation"] == "attested" for w in workers["workers"]
    )
    assert sum(w["jobs_done"] for w in workers["workers"]) == 1
    series = env.get("/explorer/api/series", window_s=300, bucket_s=10).json()
    assert len(series["tx_rate"]) == 30 and series["workers_online"][-1] == 3 and sum(series["job_rate"]) > 0


def test_not_found_and_malformed_references_are_clean_4xx(env: Env) -> None:
    for path in (
        "/explorer/block/999999",
        "/explorer/block/0xzz",
        "/explorer/tx/0x" + "00" * 32,
        "/explorer/worker/0x1234",
        "/explorer/contract/0x" + "11" * 32,
        "/explorer/job/0x" + "22" * 32,
    ):
        reply = env.get(path)
        assert reply.status_code == 404, path
        assert reply.headers["content-type"].startswith("text/html")
    assert env.get("/explorer/api/workers/0x1234").json()["error"]["code"] == "not_found"
    assert env.get("/explorer/api/blocks", limit=10_000).status_code == 400  # lists are bounded
    assert len(env.get("/explorer/api/blocks", limit=200).json()["blocks"]) <= 200


def test_reverify_runs_every_check_and_each_passes(env: Env) -> None:
    for wid in hexes(env):
        result = env.client.post(f"/explorer/api/workers/{wid}/reverify").json()
        names = [c["name"] for c in result["checks"]]
        assert names == [
            "evidence located",
            "chain & signatures (now)",
            "chain & signatures (at registration)",
            "tcb status",
            "debug off",
            "measurement allowlisted",
            "report_data binding",
            "fresh at registration",
            "policy (on-chain policy at registration)",
            "attestation unexpired",
            "binding signature",
        ]
        assert all(c["ok"] for c in result["checks"]), result["checks"]
        assert result["ok"] is True
    attestation = env.get(f"/explorer/api/workers/{hexes(env)[0]}/attestation").json()
    assert attestation["registration"]["evidence_matches"] is True
    assert attestation["verdict"]["ok"] is True and attestation["verdict"]["type"] == "sim"
    assert attestation["registration"]["role"] == "gatekeeper"


def test_reverify_follows_a_reattestation_to_its_new_evidence(env: Env) -> None:
    worker = env.sim.workers[1]
    before = env.get(f"/explorer/api/workers/{codec.to_hex(worker.public_key)}/attestation").json()
    env.chain.tick()
    env.sim.register(env.chain, worker)  # same identity again: re-attestation, new evidence
    after = env.get(f"/explorer/api/workers/{codec.to_hex(worker.public_key)}/attestation").json()
    assert after["registration"]["event"] == "WorkerReattested"
    assert after["registration"]["tx"] != before["registration"]["tx"]
    result = env.client.post(f"/explorer/api/workers/{codec.to_hex(worker.public_key)}/reverify").json()
    assert result["ok"], result["checks"]


def test_reverify_reports_a_worker_whose_evidence_no_longer_matches(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from umbra.node import explorer

    wid = hexes(env)[2]
    real = explorer.Explorer._attestation_tx

    def tampered(self: explorer.Explorer, record: Any) -> Any:
        found = real(self, record)
        args = dict(found["args"])
        args["binding_sig"] = bytes(64)
        return {**found, "args": args, "evidence_matches": False}

    monkeypatch.setattr(explorer.Explorer, "_attestation_tx", tampered)
    result = env.client.post(f"/explorer/api/workers/{wid}/reverify").json()
    failed = {c["name"] for c in result["checks"] if not c["ok"]}
    assert failed == {"evidence located", "binding signature"}
    assert result["ok"] is False


def test_never_renders_sealed_bytes(env: Env) -> None:
    assert len(env.sim.sealed) >= 6
    contract = codec.to_hex(env.sim.contract or b"")
    job = codec.to_hex(env.sim.jobs[0])
    store = env.node.store
    tx_hashes = [
        codec.to_hex(codec.sha256(raw))
        for h in range(1, store.head().height + 1)
        for raw in (store.block(h).txs if store.block(h) else ())  # type: ignore[union-attr]
    ]
    paths = [
        "/explorer",
        f"/explorer/contract/{contract}",
        f"/explorer/job/{job}",
        f"/explorer/api/jobs/{job}",
        f"/explorer/api/contracts/{contract}",
        "/explorer/api/keys",
        "/explorer/api/jobs",
        *[f"/explorer/worker/{w}" for w in hexes(env)],
        *[f"/explorer/block/{h}" for h in range(store.head().height + 1)],
        *[f"/explorer/api/blocks/{h}" for h in range(store.head().height + 1)],
        *[f"/explorer/tx/{t}" for t in tx_hashes],
        *[f"/explorer/api/txs/{t}" for t in tx_hashes],
    ]
    secrets = [s.hex() for s in env.sim.sealed]
    for path in paths:
        body = env.get(path).text.lower()
        for secret in secrets:
            for window in (secret, secret[:32], secret[-32:]):
                assert window not in body, f"{path} shows sealed bytes"
    job_json = env.get(f"/explorer/api/jobs/{job}").json()["record"]
    assert set(job_json["sealed_input"]) == {"sha256", "size"}
    result = next(iter(job_json["results"].values()))
    assert set(result["sealed_output"]) == {"sha256", "size"}
    assert set(job_json["outcome"]["sealed_output"]) == {"sha256", "size"}


def test_static_assets_are_served_and_self_contained() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "umbra" / "node" / "static"
    js = (root / "explorer.js").read_text()
    css = (root / "explorer.css").read_text()
    assert re.findall(r"https?://[^\s\"'`]+", js) == [
        "http://www.w3.org/2000/svg"
    ]  # a namespace, not a fetch
    assert "url(" not in css and "@import" not in css


def test_static_route(env: Env) -> None:
    js = env.get("/explorer/static/explorer.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert env.get("/explorer/static/explorer.css").headers["content-type"].startswith("text/css")


def test_index_replay_of_a_window_infers_statuses_before_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain longer than the backfill: workers seen only before the window keep their state
    status, so the online count is right without replaying from genesis."""
    from umbra.node import explorer

    monkeypatch.setattr(explorer, "_BACKFILL_BLOCKS", 3)
    fresh = explorer.Explorer(env.node)
    fresh.index.ensure_loaded()
    head = env.node.store.head().height
    assert fresh.index.first_height == head - 2
    assert [b.height for b in fresh.index.recent_blocks(3)] == [head, head - 1, head - 2]
    assert fresh.index.recent_blocks(1)[0].online == 3
    env.chain.tick()  # not followed: this index is not a listener, so it stays at its head
    assert fresh.index.recent_blocks(1)[0].height == head


def test_index_merges_blocks_queued_before_its_first_load_exactly_once(env: Env) -> None:
    from umbra.node import explorer

    fresh = explorer.Explorer(env.node)
    env.node.add_listener(fresh.index.on_block)  # listening, not yet loaded: notices queue up
    env.chain.tick()
    env.chain.tick()
    fresh.index.ensure_loaded()
    env.chain.tick()  # loaded: applied as it comes
    heights = [b.height for b in fresh.index.recent_blocks(10_000)][::-1]
    assert heights == list(range(heights[0], env.node.store.head().height + 1))
    assert heights[0] == 0
