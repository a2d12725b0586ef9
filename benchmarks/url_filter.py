"""CPU cost of the offline URL refusal (crawl.unsafe of the lvd-142m preset) and of reading robots opt-outs
from a page's <meta> tags, per URL / page, in CPU-microseconds of one process.

    python -m benchmarks.url_filter --urls 20000
"""

from __future__ import annotations

import argparse
import random
import time

from flows.config import PipelineConfig
from lvd.config import load_config
from tasks.crawl.config import CrawlConfig
from tasks.crawl.filters import UrlPolicy
from tasks.crawl.html_extract import extract_image_refs
from tasks.crawl.robots import meta_robots_opt_out

WORDS = ["img", "photos", "gallery", "cat", "2024", "summer", "beach", "upload", "thumb", "large", "products",
         "shoes", "wiki", "commons", "file", "landscape", "essex", "analysis", "classic"]
HOSTS = ["upload.wikimedia.org", "images.example.com", "cdn.shop-{n}.com", "static.news{n}.co.uk",
         "farm{n}.staticflickr.com", "blog{n}.github.io", "img.0-1avsex.com"]


def synthetic_urls(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        host = rng.choice(HOSTS).format(n=rng.randrange(1000))
        path = "/".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        out.append(f"https://{host}/{path}/{rng.getrandbits(40):x}.jpg")
    return out


def cpu_us_per_call(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=20000)
    args = ap.parse_args()
    prod = load_config(PipelineConfig, "lvd-142m").crawl
    urls = synthetic_urls(args.urls)
    start = time.process_time()
    full = UrlPolicy(CrawlConfig(unsafe=prod.unsafe))
    load_s = time.process_time() - start
    rows = [
        ("policy without crawl.unsafe", UrlPolicy(CrawlConfig()).refusal),
        ("crawl.unsafe lists only", UrlPolicy(CrawlConfig(unsafe=prod.unsafe.model_copy(
            update={"banned_words": False}))).refusal),
        ("crawl.unsafe words only", UrlPolicy(CrawlConfig(unsafe=prod.unsafe.model_copy(
            update={"builtin_lists": False}))).refusal),
        ("crawl.unsafe as in lvd-142m", full.refusal),
    ]
    refused = sum(full.refusal(u) is not None for u in urls)
    print(f"{args.urls} synthetic image URLs, {refused} refused by lvd-142m's filter; lists loaded in "
          f"{load_s:.2f} CPU-s (digest cache warm)")
    print("| check | CPU-us per URL |\n|---|---:|")
    for name, fn in rows:
        fn(urls[0])
        print(f"| {name} | {cpu_us_per_call(fn, urls):.1f} |")
    page = "<html><head><meta charset=utf-8><title>t</title><meta name=\"description\" content=\"x\">" \
           "<meta name=\"robots\" content=\"index, follow\"></head><body>" + \
           "".join(f'<img src="/img/{i}.jpg" alt="p{i}">' for i in range(12)) + "</body></html>"
    block = CrawlConfig().x_robots_block
    extracted = extract_image_refs(page, "http://x.test/")
    print(f"| <meta> opt-out check of a parsed page (12 images, 3 metas) | "
          f"{cpu_us_per_call(lambda p: meta_robots_opt_out(p.meta_directives, 'lvd-crawler', block), [extracted] * args.urls):.1f} |")
    print(f"| parsing that page (extract_image_refs, for scale) | "
          f"{cpu_us_per_call(lambda h: extract_image_refs(h, 'http://x.test/'), [page] * (args.urls // 10)):.1f} |")


if __name__ == "__main__":
    main()
