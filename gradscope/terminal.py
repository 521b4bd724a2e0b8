"""Text from records and user code made inert before gradscope prints it to a terminal.

Module names, paths, messages and exception texts are the user's (or a doctored record's): an
escape sequence in them could retitle the terminal, write the clipboard (OSC 52) or clear the
screen. `inert` spells every control, format and surrogate character as a Python escape.
"""

from __future__ import annotations


def inert(text) -> str:
    """`text` (any value, as `str`) with every non-printable character escaped (``\\x1b``)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
