"""The HuggingFace format: weight-name tables, config.json, model files, tokenizer files."""
