"""Evaluate, register, promote and serve: the MLflow Model Registry as the hand-off.

`pyfunc` (the registered pyfunc model and its request forms), `registry` (versions, tags and
the race-safe `champion` gate), `serve` (HTTP), `cli` (`nfpipe models …`, `nfpipe deploy …`).
Kept free of imports: it is shipped, with `pyfunc`, inside every logged model (`code_paths`).
"""
