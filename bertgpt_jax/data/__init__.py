"""The data pipeline: text -> tokenizer -> prepared store -> BERT / GPT batches.

Public entry points (see the module of each for the details):

* `host_batches(config, split, start_step, process_index, process_count)`: this process's rows
  of the global batch at every step from `start_step` (pipeline.py);
* `validation_batches(config, num_batches, process_index, process_count)`: a fixed pass over
  the validation split;
* `DataError`: the error raised for bad input, missing stores and tokenizer mismatches.

The command-line side (`bertgpt tokenizer | prepare | data-bench`) lives in cli.py, the default
corpus in embedded.py.
"""

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.pipeline import BatchSource, host_batches, validation_batches

__all__ = ["BatchSource", "DataError", "host_batches", "validation_batches"]
