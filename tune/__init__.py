"""nfpipe tune: Ray Tune sweeps over the train config (depth, coupling, learning rate, …).

`tune.config.TuneConfig` declares the sweep; `tune.sweep.run_sweep` runs or resumes it with
trials that call the train stage's own loop (`tune.trial`), ASHA stopping the weak, MLflow
parent/child runs written by the driver only (`tune.tracking`) and a leaderboard at the end.
"""
