"""A classification model through the client: label and probabilities from the .npz default
path and from JSON (diagnostics), equal to ONNX Runtime's logits on the model file."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from adapool_client import Client

from tests.service.server import REPOSITORY

MODEL = "digits-bags-adapool"


def test_labels_and_probabilities_both_ways(url: str) -> None:
    x = np.random.default_rng(4).random((3, 6, 64)).astype(np.float32)
    session = ort.InferenceSession(str(REPOSITORY / MODEL / "1" / "model.onnx"))
    logits = session.run(["logits"], {"embeddings": x, "attention_mask": np.ones((3, 6), bool)})[0]
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    with Client(url) as client:
        binary = client.pool(x, model=MODEL)
        described = client.pool(x, model=MODEL, diagnostics=True)
    for result in (binary, described):
        assert result.probabilities is not None and result.label is not None
        np.testing.assert_allclose(result.probabilities, want, atol=1e-5)
        classes = ("no 9", "has a 9")
        assert list(result.label) == [classes[i] for i in logits.argmax(axis=1)]
        assert result[1].label == result.label[1] and result.prediction is None
    with Client(url) as client:
        pooled_only = client.pool(x[:, :, :16], model="knn-avg")
    assert pooled_only.label is None and pooled_only.probabilities is None
