"""What turns runs into a book: the papermill runner, results files, claims and verdicts, reports,
verification, tables and figures, and the repository's paths.

May import the engine, the methods, the data and the ground; never the experiments.
"""
