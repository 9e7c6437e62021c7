"""Send Signature-task samples to the service: does the diagnostics' signal set match the truth?

    make run                                   # in another shell
    .venv/bin/python examples/signature_request.py [--url http://127.0.0.1:8000]
        [--tokens 64] [--signal 8 16 32] [--seed 11] [--model NAME]

For each signal count k, one sample of n tokens is drawn from the Signature task's generator
(held-out seed), pooled by the default model (or ``--model``) with the Python client
(adapool_client), and the returned ``signal_tokens`` are compared with the tokens that really
carry the signal. The generator lives in ``models/``, which needs the training extra
(``make setup``; ``make run`` alone installs no torch).
"""

from __future__ import annotations

import argparse

from adapool_client import Client

from models.data import signature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--signal", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--model", help="a model name (default: the service's default model)")
    args = parser.parse_args()
    client = Client(args.url)
    for k in args.signal:
        data = signature.generate(
            1, args.seed, num_vectors=args.tokens, min_vectors=args.tokens, signal_tokens=k
        )
        truth = set(data.signal_mask[0].nonzero()[0].tolist())
        result = client.pool(data.x, model=args.model, diagnostics=True)
        assert result.diagnostics is not None
        d = result.diagnostics[0]
        found = set(d.signal_tokens)
        hits = len(found & truth)
        print(
            f"{result.model}/{result.version}  n={args.tokens} k={k} (SNR {k / args.tokens:.3g}):"
            f" estimated_snr {d.estimated_snr:.3f}, effective_tokens"
            f" {d.effective_tokens:.1f}, noise_mass {d.noise_mass:.3f}"
        )
        print(
            f"  true signal tokens   {sorted(truth)}\n  estimated signal set {sorted(found)}\n"
            f"  precision {hits / max(len(found), 1):.2f}, recall {hits / len(truth):.2f}"
        )


if __name__ == "__main__":
    main()
