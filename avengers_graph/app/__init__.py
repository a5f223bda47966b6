"""The application layer: deployment settings, pool files, the CLI, Studio."""
