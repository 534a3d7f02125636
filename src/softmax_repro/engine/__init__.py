"""The machinery that trains models: the one training loop, models, distributed training, timing.

May import the methods, the data and the ground (``config``, ``metrics``); never the pipeline or
the experiments.
"""
