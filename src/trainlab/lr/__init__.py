"""Learning rates found rather than guessed: the LR range test and what is read from it.

- :mod:`trainlab.lr.suggest`: pure functions from a recorded (LR, loss) curve to suggested
  LRs, candidates and trust flags (no torch; the config validates ``lr_find.suggest`` against
  its methods).
- :mod:`trainlab.lr.range_test`: the test itself (ramp the LR, record the loss).
- :mod:`trainlab.lr.study`: ``trainlab lr-find`` and ``optimizer.lr: auto`` — one test per
  distinct data, model, optimizer and fine-tuning, stored and reused.

Nothing is imported here, so that the config can import :mod:`trainlab.lr.suggest` without
the test (which imports the config).
"""
