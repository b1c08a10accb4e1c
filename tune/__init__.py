"""nfpipe tune: Ray Tune sweeps over the train config (depth, coupling, learning rate, …).

`config.TuneConfig` declares the sweep and `spec.SweepSpec` is one resolved by the pipeline;
`sweep.run_sweep` runs or resumes it on the connected Ray with trials that run the training
function they are given (`trial`), ASHA stopping the weak, MLflow parent/child runs written by
the driver only (`trial_logger`), and a leaderboard at the end (`results`, `leaderboard`).
"""
