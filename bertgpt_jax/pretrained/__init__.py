"""A trained model, wherever it is: parameter-only reading of a workdir, `load_pretrained`, and
the export to a HuggingFace directory. Never imports the training stack."""
