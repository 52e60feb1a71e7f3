"""Multi-stage jobs built from the commands: `demo` (the whole method end to end) and `sweep`."""
