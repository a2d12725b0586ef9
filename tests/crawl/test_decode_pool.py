"""Decode workers: answers match in-process decoding, a killed or hung worker costs no finished work."""

import asyncio
import io
import os
import signal

from PIL import Image

from tasks.crawl import reasons
from tasks.crawl.decode_pool import DecodePool
from tasks.crawl.imaging import ImageParams, Processed, process_image

PARAMS = ImageParams(max_pixels=50_000_000, min_side=32, max_aspect_ratio=4.0, max_side=128, jpeg_quality=85)


def _jpeg(seed: int, side: int = 300) -> bytes:
    img = Image.effect_mandelbrot((side, side), (-2 + seed * 0.01, -1.5, 1, 1.5), 50).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_pool_answers_match_in_process_decoding():
    images = [_jpeg(i) for i in range(12)]

    async def go():
        async with DecodePool(2) as pool:
            return await asyncio.gather(*(pool.run(d, PARAMS) for d in images))

    results = asyncio.run(go())
    assert results == [process_image(d, PARAMS) for d in images]


def test_killed_worker_is_replaced_and_the_image_retried():
    images = [_jpeg(i, 800) for i in range(8)]

    async def go():
        async with DecodePool(1, depth=4) as pool:
            tasks = [asyncio.ensure_future(pool.run(d, PARAMS)) for d in images]
            await asyncio.sleep(0.05)
            os.kill(pool._live[0].proc.pid, signal.SIGKILL)  # as the OOM killer would
            results = await asyncio.gather(*tasks)
            return results, pool.replaced

    results, replaced = asyncio.run(go())
    assert replaced >= 1
    assert all(isinstance(r, Processed) for r in results)


def test_hung_decode_times_out_and_the_pool_recovers():
    async def go():
        async with DecodePool(1, timeout=0.001) as pool:
            slow = await pool.run(_jpeg(0, 2000), PARAMS)
            pool.timeout = 30
            after = await pool.run(_jpeg(1), PARAMS)
            return slow, after, pool.replaced

    slow, after, replaced = asyncio.run(go())
    assert slow.reason == reasons.DECODE_TIMEOUT and replaced == 1 and isinstance(after, Processed)
