"""Device parallelism: the mesh (data, fsdp, tensor), the logical axis names and the one rules
table that maps them onto it, and multi-process start-up."""
