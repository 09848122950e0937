"""Training: the sharded state and the jitted step, the loop, optimizers, checkpoints and their
provenance, preemption, and metrics."""
