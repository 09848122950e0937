"""Custom-gradient kernels the model and losses are built from: the low-precision matmul and its
backward table, GELU, hashed dropout, fused cross-entropy, layer unstacking. Several are
XLA:CPU measures (named as such; figures in benchmarks/KERNELS.md)."""
