"""Text from a record or from the user, made inert for the screen.

Module, parameter and op names, finding messages, the script's output: all of it is user data.
It reaches widgets only as `rich.text.Text` built here, never as a markup string, so ``[/]`` or
``[link=...]`` in a name is shown as typed; control characters (ESC, OSC, BEL...) are shown as
``\\x1b``-style escapes instead of reaching the terminal.
"""

from __future__ import annotations

import re

from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """`value` as a string with every control character except newline and tab escaped."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def literal(value: object, style: str = "") -> Text:
    """`value` as plain text in `style`: no markup, no control characters."""
    return Text(clean(value), style=style)
