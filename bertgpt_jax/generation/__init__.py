"""Text generation: sampling rules, and a prefill + `lax.while_loop` decode with a KV cache
carried through the model's own (scanned) layers."""
