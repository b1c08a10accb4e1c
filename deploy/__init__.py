"""Register, promote and serve: the MLflow Model Registry as the hand-off.

`pyfunc` (the registered pyfunc model and its request forms), `registry` (versions, tags and
the race-safe `champion` gate), `load` (pull a registered model), `serve` (HTTP), `images`
(PNG grids in, PNGs and shard tars out), `config` (the evaluate/promote/deploy sections).
Kept free of imports: it is shipped, with `pyfunc`, inside every logged model (`code_paths`).
"""
