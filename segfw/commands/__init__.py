"""The command edge: the only code that sees Hydra configs. It turns a config into plain values,
settles derived values before anything is saved, runs the library, writes the outputs, and turns
errors into one message and an exit code."""
