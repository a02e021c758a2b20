"""``gradoctor repro``: run a recipe's first steps twice, in two processes, with a digest of
every op's outputs, and name the first op that made the runs differ (``api.repro``)."""
