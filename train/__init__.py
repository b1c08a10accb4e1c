"""Data-parallel training of one flows model on one shard set (the train stage's library).

- `config.TrainConfig`: the typed `train:` section (`leaf_paths`: what a sweep may set).
- `evaluation.evaluate`: bits/dim of a whole split (the loop's and the evaluate stage's one
  evaluation); `evaluate_config.EvaluateConfig`: the typed `evaluate:` section.
- `loop.train(cfg, job, world, report, resume)`: the whole run in one process, free of Ray
  (a Tune trial calls it in-process; each Ray Train worker calls it too).
- `distributed.run_trainer(cfg, job, storage_path, name, callbacks)`: a Ray Train
  `TorchTrainer` running `distributed.train_worker` (which calls `loop.train`) on
  `cfg.scaling.num_workers` workers (`fit`: the train stage's run and its best checkpoint; a
  data-parallel Tune trial runs it with Tune's callback).
- `reporting`: the one reporter and resume helper of Ray Train workers and Tune trials.
- `state`, `optim`, `ddp`, `evaluation`, `checkpoint`, `seeding`, `hooks`: the pieces of a
  run; `export` turns a finished run into a model bundle.
"""
