"""Launchers for bertgpt-jax: TPU VMs (tpu.py), GPU hosts and SLURM (gpu.py), and local
multi-process runs on one machine (local.py). Run them from the repository root as
`python -m launch.tpu ...`; each has `--dry-run`, which prints the exact commands. See README.md.
"""
