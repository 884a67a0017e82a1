"""The explorer in a real browser (Playwright driving Debian's chromium) against live networks:
every view loads without console errors, search works, a new block and a completed job appear
without a reload, and re-verifying a worker's attestation shows each check passing. Screenshots
of every view go to test-artifacts/explorer/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.explorer.conftest import CHROMIUM, CHROMIUM_FLAGS, UI, DevNet, WorkerNet
from umbra import codec
from umbra.chain.types import Call, Tx

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def transfer(dev: DevNet, amount: int) -> str:
    """A transfer from alice, posted and waited for over the node's HTTP API."""
    alice = dev.key("alice")
    bob = dev.key("bob")
    with httpx.Client(base_url=dev.url, timeout=30) as http:
        status = http.get("/status").json()
        nonce = http.get(f"/accounts/{codec.to_hex(alice.public_key)}").json()["nonce"]
        tx = Tx(
            status["chain_id"],
            alice.public_key,
            nonce,
            Call("balances", "transfer", {"to": bob.public_key, "amount": amount}),
            1,
        )
        reply = http.post("/tx", params={"wait": "true"}, json={"tx": codec.to_hex(tx.sign(alice).encode())})
    assert reply.status_code == 200 and reply.json()["status"] == "included", reply.text
    return str(reply.json()["tx_hash"])


def mark_page(ui: UI) -> None:
    """A value that only survives as long as this document: a reload would erase it."""
    ui.page.evaluate("window.__explorerMarker = 'still-here'")


def assert_not_reloaded(ui: UI) -> None:
    assert ui.page.evaluate("window.__explorerMarker") == "still-here", "the page was reloaded"


def test_overview_loads_live_with_charts(ui: UI, dev: DevNet) -> None:
    ui.open(f"{dev.url}/explorer")
    ui.page.wait_for_selector("#live.on")
    ui.page.wait_for_selector("[data-series][data-updated]")
    for section in ("summary", "workers", "blocks", "txs", "keys", "contracts", "jobs", "staking"):
        assert ui.page.locator(f"#{section}").is_visible(), section
    assert ui.page.locator("figure.chart svg path.line").count() >= 3
    ui.shot("overview")


def test_a_new_block_and_its_tx_appear_without_reload(ui: UI, dev: DevNet) -> None:
    ui.open(f"{dev.url}/explorer")
    ui.page.wait_for_selector("#live.on")
    mark_page(ui)
    tx_hash = transfer(dev, 7)
    height = httpx.get(f"{dev.url}/tx/{tx_hash}").json()["block"]
    ui.page.wait_for_selector(f'#blocks tr[data-height="{height}"]')
    ui.page.wait_for_selector(f'#txs tr[data-tx="{tx_hash}"]')
    ui.page.wait_for_function(
        "h => parseInt(document.getElementById('head-height').textContent.slice(1), 10) >= h", arg=height
    )
    assert_not_reloaded(ui)
    ui.shot("live-block")


def test_search_by_height_hash_tx_and_address(ui: UI, dev: DevNet) -> None:
    tx_hash = transfer(dev, 11)
    tx = httpx.get(f"{dev.url}/tx/{tx_hash}").json()
    block = httpx.get(f"{dev.url}/blocks/{tx['block']}").json()
    alice = codec.to_hex(dev.key("alice").public_key)

    def search(query: str) -> None:
        ui.page.fill("#search", query)
        with ui.page.expect_navigation():
            ui.page.press("#search", "Enter")
        ui.page.wait_for_selector("body[data-ready='1']")

    ui.open(f"{dev.url}/explorer")
    search(str(tx["block"]))
    assert ui.page.url.endswith(f"/explorer/block/{tx['block']}")
    assert ui.page.locator("h1").inner_text() == f"Block #{tx['block']}"
    assert tx_hash in ui.page.content()
    ui.shot("block")

    search(block["hash"])
    assert ui.page.url.endswith(f"/explorer/block/{block['hash']}")
    assert ui.page.locator("h1").inner_text() == f"Block #{tx['block']}"

    search(tx_hash)
    assert ui.page.url.endswith(f"/explorer/tx/{tx_hash}")
    assert "balances.transfer" in ui.page.content()
    ui.shot("tx")

    search(alice)
    assert ui.page.url.endswith(f"/explorer/account/{alice}")
    assert tx_hash[:10] in ui.page.content()
    ui.shot("account")

    ui.page.fill("#search", "0x" + "ab" * 32)
    ui.page.press("#search", "Enter")
    ui.page.wait_for_selector("text=Nothing matches")
    ui.shot("search-not-found")


def test_blocks_list_pages_back(ui: UI, dev: DevNet) -> None:
    ui.open(f"{dev.url}/explorer/blocks")
    assert ui.page.locator("table.grid tbody tr").count() >= 2
    ui.shot("blocks")


def test_first_view_lists_workers_with_attestation_before_any_script(worker_nets: list[WorkerNet]) -> None:
    for net in worker_nets:
        html = httpx.get(f"{net.url}/explorer").text
        assert net.workers, f"{net.mode}: no workers to show"
        for wid in [*net.workers, *net.gatekeepers]:
            assert wid in html, (net.mode, wid)
        assert "attested" in html


def test_dump_dom_shows_worker_ids_and_attestation(worker_nets: list[WorkerNet], tmp_path: Path) -> None:
    """What outside checks run: headless chromium --dump-dom must show a worker id and 'attest'."""
    for net in worker_nets:
        profile = f"--user-data-dir={tmp_path / net.mode}"  # never the user's own profile
        out = subprocess.run(
            [CHROMIUM, "--headless", *CHROMIUM_FLAGS, profile, "--dump-dom", f"{net.url}/explorer"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert net.workers[0] in out.stdout, net.mode
        assert "attest" in out.stdout


def test_workers_keys_and_staking_views(ui: UI, worker_nets: list[WorkerNet]) -> None:
    for net in worker_nets:
        ui.open(f"{net.url}/explorer")
        for wid in net.workers:
            row = ui.page.locator(f'#workers tr[data-worker="{wid}"]')
            assert row.count() == 1, (net.mode, wid)
            assert "attested" in row.locator("td.attestation").inner_text()
        assert "Current key epoch: 0" in ui.page.locator("#keys").inner_text()
        for gk in net.gatekeepers:
            assert gk in ui.page.locator("#keys").inner_text()
        staking = ui.page.locator("#staking").inner_text().lower()
        assert "commission" in staking or "no staking pools" in staking
        ui.shot(f"workers-{net.mode}")


def test_attestation_reverify_shows_each_check_passing(ui: UI, worker_nets: list[WorkerNet]) -> None:
    for net in worker_nets:
        ui.open(f"{net.url}/explorer/worker/{net.workers[0]}")
        assert "as verified at registration" in ui.page.content()
        ui.page.click("#reverify")
        ui.page.wait_for_selector("#reverify-result table.checks")
        rows = ui.page.locator("#reverify-result tr.check")
        names = [rows.nth(i).get_attribute("data-check") for i in range(rows.count())]
        for expected in (
            "chain & signatures (now)",
            "tcb status",
            "debug off",
            "measurement allowlisted",
            "report_data binding",
            "fresh at registration",
            "attestation unexpired",
            "binding signature",
        ):
            assert expected in names, names
        results = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())]
        assert results == ["pass"] * len(names), (net.mode, dict(zip(names, results, strict=True)))
        assert ui.page.locator("#reverify-result").get_attribute("data-ok") == "true"
        ui.shot(f"attestation-{net.mode}")


def test_a_completed_job_appears_without_reload(ui: UI, worker_nets: list[WorkerNet]) -> None:
    """On each network: a job run while the overview is open shows up settled, with no reload;
    then its lifecycle page and its contract's page (code with its hash) load."""
    for net in worker_nets:
        ui.open(f"{net.url}/explorer")
        ui.page.wait_for_selector("#live.on")
        mark_page(ui)
        job = net.run_job()
        ui.page.wait_for_selector(f'#jobs tr[data-job="{job}"] .job-status >> text=settled')
        assert_not_reloaded(ui)
        ui.shot(f"job-live-{net.mode}")

        ui.open(f"{net.url}/explorer/job/{job}")
        content = ui.page.content()
        for step in ("requested", "assigned", "result", "settled"):
            assert f'class="step {step}"' in content, (net.mode, step)
        ui.shot(f"job-{net.mode}")

        ui.open(f"{net.url}/explorer/contract/{net.contract}")
        assert "class Counter(Contract)" in ui.page.locator("#code pre").inner_text()
        assert re.fullmatch(r"0x[0-9a-f]{64}", ui.page.locator("#code-hash").inner_text())
        assert "matches code" in ui.page.content()
        ui.shot(f"contract-{net.mode}")
        assert_ciphertext_never_shown(net, job)


def assert_ciphertext_never_shown(net: WorkerNet, job: str) -> None:
    """The node's raw state API holds this job's ciphertext (input, outputs) and the contract's
    encrypted state; no explorer page or JSON answer may contain any of it."""
    raw = httpx.get(f"{net.url}/state/compute/job", params={"key": job}).json()["value"]
    sealed = [raw["sealed_input"], raw["outcome"]["sealed_output"]]
    sealed += [r["sealed_output"] for r in raw["results"].values()]
    state = httpx.get(f"{net.url}/state/contracts/state", params={"key": net.contract}).json()["value"]
    if state.get("blob"):
        sealed.append(state["blob"])
    assert all(isinstance(s, str) and len(s) > 66 for s in sealed), sealed
    for path in (
        "/explorer",
        f"/explorer/job/{job}",
        f"/explorer/contract/{net.contract}",
        f"/explorer/api/jobs/{job}",
        f"/explorer/api/contracts/{net.contract}",
        "/explorer/api/fragments/jobs",
    ):
        body = httpx.get(f"{net.url}{path}").text.lower()
        for ciphertext in sealed:
            assert ciphertext[2:66].lower() not in body, f"{net.mode} {path} shows ciphertext"


def test_pages_never_show_sealed_bytes(sim: WorkerNet) -> None:
    """The sim network knows every ciphertext it posted: none may appear on any page."""
    assert sim.sealed
    pages = [f"{sim.url}/explorer", f"{sim.url}/explorer/contract/{sim.contract}"]
    pages += [f"{sim.url}/explorer/worker/{w}" for w in sim.workers]
    jobs = httpx.get(f"{sim.url}/explorer/api/jobs").json()["jobs"]
    pages += [f"{sim.url}/explorer/job/{j['id']}" for j in jobs]
    for url in pages:
        body = httpx.get(url).text.lower()
        for sealed in sim.sealed:
            assert sealed.hex()[:32] not in body, url
