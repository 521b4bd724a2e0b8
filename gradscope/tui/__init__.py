"""The terminal UI (Textual). Imported only by the commands that open it."""
