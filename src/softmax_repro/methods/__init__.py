"""What the papers propose: losses, output heads, samplers, estimators and maps.

Pure PyTorch, no file I/O and no training loop. One module per method family; each module's
docstring names the paper and equation it implements and the chapter that tests it. Imports only
``softmax_repro.config`` and ``softmax_repro.metrics`` (the ground) and other method modules.
"""
