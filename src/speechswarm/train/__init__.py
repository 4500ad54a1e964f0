"""Training building blocks the loop in `speechswarm.train` wires together.

    speechswarm train --config configs/demo.yaml

`optim` builds optimizers (weight decay off for biases and norm parameters) and LR schedules
as pure functions of the step; `checkpoint` saves and loads weights-only checkpoints
atomically and keeps the last/best ones of a run; `rng` captures and restores every global
random generator so an interrupted run resumes with the same numbers.
"""
