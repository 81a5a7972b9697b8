"""Command-line interface: ``brainseg`` and one module per subcommand."""
