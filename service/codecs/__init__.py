"""Request decoding and answer encoding, by format.

- :mod:`service.codecs.json_body`: JSON lists and JSON with base64 request bodies;
- :mod:`service.codecs.npy`: ``.npy`` and raw-byte request bodies;
- :mod:`service.codecs.answers`: ``.npy`` and ``.npz`` answers;
- :mod:`service.codecs.common`: the limits and checks every decoder shares.
"""

from service.codecs.answers import encode_npy, encode_npz
from service.codecs.common import DTYPES, Limits, parse_lengths, parse_shape
from service.codecs.json_body import decode_json
from service.codecs.npy import decode_npy, decode_raw

__all__ = [
    "DTYPES",
    "Limits",
    "decode_json",
    "decode_npy",
    "decode_raw",
    "encode_npy",
    "encode_npz",
    "parse_lengths",
    "parse_shape",
]
