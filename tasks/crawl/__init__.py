"""The crawl stage: web pages, WARCs or URL lists in; WebDataset pool shards and a record of every URL out.

Entry points live in tasks.crawl.stage (plan_crawl_parts, crawl_part, finalize_crawl); the demo web for
tests, demos and benchmarks in lvd.demo_web.
"""
