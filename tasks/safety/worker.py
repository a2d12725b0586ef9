"""Model worker process: ``python -m tasks.safety.worker``.

Reads 8-byte-length-prefixed pickled frames on stdin: first ``(config JSON, SafetyModels)``,
answered with ``"ready"`` once the models are loaded, then batches of ``(key, jpg bytes)``,
each answered with a :class:`BatchResult`. An exception is sent back as a WorkerFailed carrying
the traceback, and the worker exits; it imports only this package and the model runtimes.
"""

from __future__ import annotations

import pickle
import sys
import traceback


def _send(out, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(len(data).to_bytes(8, "big") + data)
    out.flush()


def _receive(inp):
    header = inp.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(inp.read(int.from_bytes(header, "big")))


def serve(inp, out) -> None:
    from tasks.safety.config import SafetyConfig
    from tasks.safety.pool import WorkerFailed
    from tasks.safety.process import SafetyProcessor

    try:
        init = _receive(inp)
        if init is None:
            return
        cfg_json, models = init
        processor = SafetyProcessor(SafetyConfig.model_validate_json(cfg_json), models)
        _send(out, "ready")
        while (batch := _receive(inp)) is not None:
            _send(out, processor.process(batch))
    except Exception as exc:
        _send(out, WorkerFailed(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))


if __name__ == "__main__":
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    serve(sys.stdin.buffer, stdout)
