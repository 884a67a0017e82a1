"""Inference: train a credit-scoring model here, upload it as a sealed secret, score private
applicants inside the enclave with onnxruntime, and check the scores against the local model.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
FEATURES = ("income_k", "debt_k", "age", "late_payments")
THRESHOLD_PPM = 300_000
TOLERANCE_PPM = 5  # float32 ONNX vs float64 scikit-learn


def train(seed: int = 7, n: int = 4000) -> tuple[Pipeline, bytes]:
    """Logistic regression on synthetic loan histories: (model, its ONNX encoding)."""
    rng = np.random.default_rng(seed)
    income = rng.normal(60, 20, n).clip(10, 200)
    debt = rng.normal(20, 12, n).clip(0, 120)
    age = rng.integers(18, 75, n).astype(float)
    late = rng.poisson(0.8, n).astype(float)
    logit = 0.5 - 0.045 * income + 0.07 * debt - 0.02 * (age - 40) + 0.7 * late
    defaulted = rng.random(n) < 1 / (1 + np.exp(-logit))
    x = np.column_stack([income, debt, age, late]).astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, defaulted)
    onnx = to_onnx(model, x[:1], options={LogisticRegression: {"zipmap": False}})
    return model, onnx.SerializeToString()


def local_risk_ppm(model: Pipeline, applicant: dict[str, float]) -> int:
    row = np.array([[applicant[name] for name in FEATURES]], dtype=np.float32)
    return round(float(model.predict_proba(row)[0][1]) * 1_000_000)


def main() -> int:
    keys = dev_keys()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    model, onnx_bytes = train()
    print(f"trained a logistic regression; ONNX model is {len(onnx_bytes)} bytes")
    applicants = {
        "bob": {"income_k": 85.0, "debt_k": 10.0, "age": 45.0, "late_payments": 0.0},
        "charlie": {"income_k": 28.0, "debt_k": 55.0, "age": 23.0, "late_payments": 4.0},
    }
    with (
        Client(key=keys["alice"]) as lender,
        Client(key=keys["bob"]) as bob,
        Client(key=keys["charlie"]) as charlie,
    ):
        cid = lender.deploy(CONTRACT, init={"threshold_ppm": THRESHOLD_PPM}).contract_id
        print(f"deployed credit scorer {cid}")
        lender.upload_secret(cid, "model", onnx_bytes)
        print("uploaded the model as a secret sealed to the contract key")

        approved = {}
        for name, client, replicas in (("bob", bob, 2), ("charlie", charlie, 1)):
            applicant = applicants[name]
            result = client.call(cid, "score", {"applicant": applicant}, replicas=replicas)
            expected = local_risk_ppm(model, applicant)
            risk = result.output["default_risk_ppm"]
            check(
                abs(risk - expected) <= TOLERANCE_PPM and result.output["approved"] == (risk < THRESHOLD_PPM),
                f"{name}: risk {risk / 1e4:.2f}% (local model {expected / 1e4:.2f}%), "
                f"approved={result.output['approved']}, {len(result.workers)} worker(s), verified={result.verified}",
            )
            approved[name] = result.output["approved"]
        check(approved == {"bob": True, "charlie": False}, f"decisions: {approved}")
        try:
            bob.query(cid, "stats")
            check(False, "an applicant reads the lender's stats")
        except UmbraError as exc:
            check("owner only" in exc.message, "an applicant cannot read the lender's stats")
        stats = lender.query(cid, "stats").output
        check(stats["scored"] == 2, f"the lender sees only a count: {stats}")
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
