"""The faces over the pipeline: the command line (``cli``: the platform entry point, ``run``, ``batch`` and the
other commands), the table scorer, evaluation, the output contract checker and the run report."""
