"""One module per chapter: ``Config``, ``PROFILES``, ``make_config`` and ``run``."""
