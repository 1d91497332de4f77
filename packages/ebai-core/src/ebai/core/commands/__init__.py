"""Subcommands of ``ebai`` that ebai-core provides (registered through ``ebai.cli`` entry points)."""
