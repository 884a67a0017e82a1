"""Confidential credit scoring: the lender's model and each applicant's data stay private.

The model is an ONNX file the owner uploaded as a secret sealed to this contract's key; it is
opened only inside the enclave (`ctx.secret`). Applicants send their features sealed to the
contract and get their score sealed back to them. The probability is quantized to parts per
million before it is returned, so replicas on different hardware agree on the committed output.
"""

import numpy as np
import onnxruntime as ort

from umbra.contract import Contract, command, query

FEATURES = ("income_k", "debt_k", "age", "late_payments")
PPM = 1_000_000


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread per job, as the sandbox expects
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class CreditScore(Contract):
    def init(self, ctx, threshold_ppm=300_000):
        self.state["owner"] = ctx.caller
        self.state["threshold_ppm"] = threshold_ppm
        self.state["scored"] = 0

    @command
    def score(self, ctx, applicant):
        missing = [name for name in FEATURES if name not in applicant]
        if missing:
            raise ValueError(f"missing features: {', '.join(missing)}")
        row = np.array([[float(applicant[name]) for name in FEATURES]], dtype=np.float32)
        session = _session(ctx.secret("model"))
        (probabilities,) = session.run(["probabilities"], {session.get_inputs()[0].name: row})
        risk_ppm = round(float(probabilities[0][1]) * PPM)
        self.state["scored"] += 1  # only a count: no applicant's data is kept
        return {"default_risk_ppm": risk_ppm, "approved": risk_ppm < self.state["threshold_ppm"]}

    @query
    def stats(self, ctx):
        if ctx.caller != self.state["owner"]:
            raise PermissionError("owner only")
        return {"scored": self.state["scored"], "threshold_ppm": self.state["threshold_ppm"]}
