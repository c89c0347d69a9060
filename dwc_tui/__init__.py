"""dwc_tui: the `dwc` command (Typer) and the terminal dashboard (Textual). Talks to dwc_core through the
registry and a few plain functions; never imports torch at module import time."""
