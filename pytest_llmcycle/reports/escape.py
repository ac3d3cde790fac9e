"""Escaping for each place a rendered string goes: a terminal, a Markdown table, HTML, JUnit XML.

Stage names are checked when measured, but node ids, device keys, reasons, units, environment
values and everything read back from a baseline file, a JSON report or a history file can hold
any text, so every renderer escapes at its output, once, with the function for its destination.
Stdlib only: the plugin imports the report modules in every run.
"""
from __future__ import annotations

import html
import re
from typing import Any

# C0 controls, DEL and C1 controls (ESC and CSI start terminal sequences, OSC retitles a
# window), line/paragraph separators, and lone surrogates (which cannot be written as UTF-8).
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
_UNSAFE = re.compile(f"[{_CONTROLS}]")
#: characters XML 1.0 forbids (and the controls above, which a JUnit viewer would print raw)
_XML_UNSAFE = re.compile(f"[{_CONTROLS}\ufffe\uffff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def visible(text: Any, keep: str = "") -> str:
    """For a terminal: control characters as visible escapes (``\\x1b``, ``\\n``), except those in ``keep``.

    Backslashes are left alone, so a node id pytest already escaped (``test_x[\\n]``) prints as pytest prints it.
    """
    text = str(text)
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _shown(m), text)
    return _UNSAFE.sub(_shown, text)


def xml_text(text: Any) -> str:
    """For a JUnit property name or value: what XML 1.0 cannot hold, as visible escapes
    (pytest escapes property values itself, but not names; one bad name breaks the whole file)."""
    return _XML_UNSAFE.sub(_shown, str(text))


#: characters with a meaning in a GFM table cell: HTML (as entities), then inline syntax
#: (links, images, emphasis, code, strikethrough) and the cell separator, backslash-escaped
_MD = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*_[]()!~|"}})
_ONE_LINE = str.maketrans("\r\n", "  ")


def md_text(text: Any) -> str:
    """For Markdown text in a table cell, a list item or a heading: shows exactly ``text``, on one line.

    ``<img ...>``, ``[x](javascript:...)``, ``**``, a backtick or a ``|`` render as themselves;
    newlines become spaces, other control characters visible escapes.
    """
    return visible(str(text).translate(_ONE_LINE)).translate(_MD)


def md_code(text: Any, table: bool = True) -> str:
    """An inline code span: its content renders literally, so only what could end it is changed
    (a backtick becomes ``'``, a newline a space) and, in a table, a ``|`` that would end the cell.

    GFM and markdown-it treat a ``|`` right after a backslash as part of the cell and drop that
    one backslash, so ``\\|`` here shows the original text exactly, backslashes before it included.
    """
    text = visible(str(text).translate(_ONE_LINE)).replace("`", "'")
    return "`" + (text.replace("|", "\\|") if table else text) + "`"


def html_text(text: Any) -> str:
    """For HTML text and attribute values (quoted): ``& < > " '`` as entities, controls visible
    (whitespace kept: HTML folds it)."""
    return html.escape(visible(text, keep="\n\r\t"), quote=True)
