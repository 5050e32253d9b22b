"""Sub-commands of the castle-bridge CLI, one module each."""
