"""The subcommands of ``websync``, one module per area."""
