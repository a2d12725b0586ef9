"""Decode/resize worker process: reads length-prefixed pickled (bytes, ImageParams) on stdin and answers
with length-prefixed pickled Processed | Refused on stdout. Started as `python -m tasks.crawl.decode_worker`,
so it imports only Pillow and this package, never the parent's main module."""

from __future__ import annotations

import pickle
import sys

from tasks.crawl.imaging import process_image


def serve(stdin, stdout) -> None:
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return
        payload = stdin.read(int.from_bytes(header, "big"))
        data, params = pickle.loads(payload)
        answer = pickle.dumps(process_image(data, params), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(len(answer).to_bytes(4, "big") + answer)
        stdout.flush()


if __name__ == "__main__":
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    serve(sys.stdin.buffer, out)
