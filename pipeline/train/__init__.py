"""Data-parallel training of one flows model on one shard set (the train stage's library).

- `config.TrainConfig`: the typed `train:` section.
- `loop.train(cfg, job, world, report, resume)`: the whole run in one process, free of Ray
  (a Tune trial calls it in-process; each Ray Train worker calls it too).
- `distributed.fit(cfg, job, storage_path, name)`: a Ray Train `TorchTrainer` running
  `distributed.train_worker` (which calls `loop.train`) on `cfg.scaling.num_workers` workers.
- `checkpoint`, `state`, `ddp`, `evaluation`, `optim`, `tracker`, `export`: the pieces.
"""
