"""Shell output as a person reads it on a terminal: rendered by pyte, a VT100/xterm emulator.

Colours and other attributes are dropped, cursor moves, erasures and `\\r` redraws are
resolved, and what scrolled off the top of the screen is kept as scrollback, as a terminal
window's would be. The text renders on a fresh screen of the shell's size, so a window of
output reads as it would in a terminal cleared just before it.
"""

from __future__ import annotations

import pyte
from pyte import modes


class _Screen(pyte.Screen):
    """A pyte screen that keeps, as text, every line scrolled off its top."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.scrollback: list[str] = []
        # A bare "\n" starts a new line at the left, as text from a PTY (ONLCR) always does.
        self.set_mode(modes.LNM)

    def index(self) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        # Only whole-screen scrolling feeds the scrollback; a region (a pager's, an
        # editor's) scrolls inside the screen, as in xterm.
        if self.cursor.y == bottom and top == 0:
            self.scrollback.append(self.render_line(0))
        super().index()

    def render_line(self, y: int) -> str:
        line = self.buffer[y]
        # A wide character fills two cells; pyte keeps "" in the second.
        return "".join(line[x].data for x in range(self.columns))


def render(text: str, *, cols: int, rows: int) -> str:
    """`text` as a cols x rows terminal shows it: scrollback, then the screen, trailing
    blanks of every line and blank lines at the end removed."""
    screen = _Screen(cols, rows)
    pyte.Stream(screen).feed(text)
    lines = [*screen.scrollback, *(screen.render_line(y) for y in range(rows))]
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
