"""Ask the committed digits-bags model whether a bag of handwritten digits holds a '9', and
which of its images were the '9's.

    make run                                     # in another terminal
    .venv/bin/python examples/digits_request.py  # needs make setup (scikit-learn's digits)

The bag is ten test images (never seen in training) of scikit-learn's bundled digits, two of
them '9's. The answer: the label and its probability, the images the pooling weights call
signal (the model's own signal rule), and each image's exact share of the "has a 9" logit.
"""

from __future__ import annotations

import argparse

import httpx
import numpy as np
from adapool_client import Client

from models.data.digits_bags import BagsSpec, image_split, load_images

MODEL = "digits-bags-adapool"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()

    images, digits = load_images()
    test = image_split(digits, BagsSpec(image_seed=0)) == 2  # the model's own test images
    rng = np.random.default_rng(3)
    nines = rng.choice(np.flatnonzero(test & (digits == 9)), 2, replace=False)
    others = rng.choice(np.flatnonzero(test & (digits != 9)), 8, replace=False)
    order = rng.permutation(np.concatenate([nines, others]))
    bag = images[order]  # [10, 64]: ten images, one token each
    print("digits in the bag:   ", digits[order].tolist())

    with Client(args.url) as client:
        result = client.pool(bag, model=MODEL, diagnostics=True)
    item = result[0]
    assert item.diagnostics is not None and item.probabilities is not None
    print("label:               ", item.label, f"(p = {item.probabilities.max():.3f})")
    print("signal images:       ", list(item.diagnostics.signal_tokens), "(the weights' choice)")
    print("the '9's were images:", np.flatnonzero(digits[order] == 9).tolist())

    answer = httpx.post(
        f"{args.url}/models/{MODEL}/pool?contributions=true&diagnostics=false",
        json={"embeddings": [bag.tolist()]},
    ).json()
    share = np.asarray(answer["contributions"][0])[:, 1]  # each image's term of "has a 9"
    print("share of 'has a 9':  ", np.round(share, 2).tolist())


if __name__ == "__main__":
    main()
