"""Safety post-processing of the crawl pool: NSFW removal and face blurring (the `safety` stage)."""
