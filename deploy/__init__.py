"""Register, promote and serve: the MLflow Model Registry as the hand-off.

`pyfunc` (the registered pyfunc model, its request forms and their units of work),
`request_checks` (what a request may send), `latent_requests` (the encode, decode, interpolate
and manipulate modes), `registry` (versions, tags and the race-safe `champion` gate), `load`
(pull a registered model: weights and config only, sha256 checked), `scheduler` (fair sharing
of one model between requests), `serve` (HTTP), `images` (PNG grids out, PNG files and checked
shard tars in), `config` (the evaluate/promote/deploy sections).
Kept free of imports: it is shipped, with `pyfunc`, `request_checks` and `latent_requests`,
inside every logged model (`code_paths`).
"""
