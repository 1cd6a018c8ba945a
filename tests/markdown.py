"""What a person reads where the App renders a string as Markdown (form labels and messages).

The App renders with a CommonMark renderer (react-markdown); markdown-it-py, also CommonMark,
with GitHub's strikethrough and tables, stands in for it here.
"""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

_RENDERER = MarkdownIt("commonmark").enable(["strikethrough", "table"])
_BLOCK_TAG = re.compile(
    r"</?(p|h[1-6]|ul|ol|li|blockquote|pre|table|thead|tbody|tr|th|td|hr|br)\b[^>]*>"
)


def shown_text(markdown: str) -> str:
    """The text ``markdown`` shows: rendered, tags dropped, entities decoded, blocks joined
    by one space."""
    rendered = _BLOCK_TAG.sub(" ", _RENDERER.render(markdown))
    text = re.sub(r"<[^>]+>", "", rendered)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()
