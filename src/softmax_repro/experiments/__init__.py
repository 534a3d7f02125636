"""One module per chapter, named by chapter (``chNN_<topic>``): ``Config``, ``PROFILES``,
``make_config`` and ``run``. The top floor: may import everything else, nothing imports it."""
