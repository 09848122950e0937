"""Performance tools: `bertgpt bench`, the ahead-of-time TPU fit check, HLO reading, and the
allocator the command line preloads."""
