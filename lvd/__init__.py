"""Command line and user-facing API of lvd."""
