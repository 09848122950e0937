"""Fine-tuning data: labelled files (files.py: CSV / TSV / JSON / JSONL, CoNLL, SQuAD) read
with the init model's tokenizer into fixed-shape rows (encode.py: BERT's [CLS] A [SEP] B [SEP]
layout; sequence.py, tagging.py, qa.py: each task's examples and labels) and batched as the
pretraining pipeline batches (batches.py: a pure function of the seed and the step; evaluation
pads the last batch and masks it).

GPT fine-tuning reads documents and prompt -> completion examples (lm.py, with chat templates in
chat.py) into a prepared store that the pretraining packer reads."""
