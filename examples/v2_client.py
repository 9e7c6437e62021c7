"""A Triton client, unchanged, against AdaPool Serve's KServe v2 routes (HTTP and gRPC).

    make run ARGS="--grpc-port 8001"        # in another terminal
    .venv/bin/python examples/v2_client.py  # tritonclient is in the dev extra (make setup)

Binary inputs, default outputs: everything the model has, diagnostics included.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--model", default="signature-adapool")
    args = parser.parse_args()

    # Two sets of 16-dim tokens, the second with 3 real tokens of 6 (ragged, by the mask).
    x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype(np.float32)
    mask = np.ones((2, 6), dtype=bool)
    mask[1, 3:] = False

    client = httpclient.InferenceServerClient(args.http)
    print("server ready:", client.is_server_ready(), client.get_server_metadata()["extensions"])
    inputs = [
        httpclient.InferInput("embeddings", list(x.shape), "FP32"),
        httpclient.InferInput("attention_mask", list(mask.shape), "BOOL"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(mask)
    result = client.infer(args.model, inputs)
    for output in result.get_response()["outputs"]:
        print(f"  {output['name']:<17} {output['datatype']:<5} {output['shape']}")
    np.set_printoptions(precision=4, suppress=True)
    print("pooled[1][:4]     ", result.as_numpy("pooled")[1, :4])
    print("weights[1] (head 0)", result.as_numpy("weights")[1, 0])
    print("signal_mask[1]    ", result.as_numpy("signal_mask")[1])
    print("effective_tokens  ", result.as_numpy("effective_tokens"))

    grpc = grpcclient.InferenceServerClient(args.grpc)
    grpc_inputs = [
        grpcclient.InferInput("embeddings", list(x.shape), "FP32"),
        grpcclient.InferInput("attention_mask", list(mask.shape), "BOOL"),
    ]
    grpc_inputs[0].set_data_from_numpy(x)
    grpc_inputs[1].set_data_from_numpy(mask)
    pooled = grpc.infer(args.model, grpc_inputs).as_numpy("pooled")
    print("gRPC pooled equals HTTP:", bool(np.array_equal(pooled, result.as_numpy("pooled"))))


if __name__ == "__main__":
    main()
