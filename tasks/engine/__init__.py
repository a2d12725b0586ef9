"""One training loop (:mod:`tasks.engine.loop`); the objectives that plug in (:mod:`tasks.engine.objectives`)."""
