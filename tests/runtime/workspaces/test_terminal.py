"""Plain rendering of shell output (pyte): what a person would read in a terminal window."""

from __future__ import annotations

from pyro_mcp.runtime.workspaces.terminal import render


def test_colours_and_bracketed_paste_marks_are_dropped() -> None:
    raw = (
        "\x1b[?2004hpyro$ ls --color\r\n\x1b[?2004l\r"
        "\x1b[0m\x1b[01;34msrc\x1b[0m  \x1b[01;32mrun.sh\x1b[0m\r\n"
        "\x1b[38;5;208morange\x1b[0m \x1b[1;4mbold\x1b[22;24m\r\n\x1b[?2004hpyro$ "
    )
    assert render(raw, cols=80, rows=24) == "pyro$ ls --color\nsrc  run.sh\norange bold\npyro$"


def test_carriage_return_redraws_keep_only_the_last_state() -> None:
    progress = "".join(f"\rdownloading {n:3d}%" for n in range(0, 101, 10))
    assert render(progress + "\r\ndone\r\n", cols=40, rows=5) == "downloading 100%\ndone"
    # A shorter redraw that erases the rest of the line (ESC[K), as progress bars do.
    assert render("long status text\r\x1b[Kok\r\n", cols=40, rows=5) == "ok"


def test_cursor_moves_backspaces_and_erases_are_resolved() -> None:
    assert render("abc\b\bX\r\n", cols=20, rows=3) == "aXc"
    assert render("12345\x1b[3D\x1b[1P\r\n", cols=20, rows=3) == "1245"
    assert render("top\r\nmiddle\x1b[1A\x1b[2K\rTOP\x1b[1B\r\n", cols=20, rows=5) == "TOP\nmiddle"
    assert render("gone\x1b[2J\x1b[Hfresh\r\n", cols=20, rows=5) == "fresh"


def test_scrollback_and_wrapping_follow_the_window_size() -> None:
    lines = "".join(f"line {i}\r\n" for i in range(100))
    assert render(lines, cols=20, rows=5).split("\n") == [f"line {i}" for i in range(100)]
    assert render("x" * 25 + "\r\n", cols=10, rows=4) == "xxxxxxxxxx\nxxxxxxxxxx\nxxxxx"


def test_a_bare_newline_starts_a_new_line_and_wide_characters_fill_two_cells() -> None:
    assert render("one\ntwo\n", cols=20, rows=4) == "one\ntwo"
    assert render("中文 ok\r\n🙂!\r\n", cols=20, rows=4) == "中文 ok\n🙂!"


def test_nothing_renders_as_nothing() -> None:
    assert render("", cols=120, rows=30) == ""
    assert render("\x1b[31m\x1b[0m", cols=120, rows=30) == ""
