"""The byte filter in front of the XML parser: its repairs do not depend on the chunks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rua_sink.core.xmlclean import XmlCleaner

# Pieces of documents where a "<" may or may not start a tag: names of every length up to
# past the limit of the name test, what may follow a name, text, references.
PIECES = st.sampled_from(
    [
        b"<",
        b"</",
        b"<a",
        b"<email>",
        b"</email>",
        b"<x/>",
        b"<y />",
        b"<noreply",
        b"@example.net>",
        b"example.net",
        b" ",
        b"\n",
        b"/",
        b">",
        b"=",
        b'"',
        b"&",
        b"&lt;",
        b"&amp;",
        b"<!--c-->",
        b"<?pi?>",
        b"n" * 250,
        b"n" * 7,
        b"1",
        b"\xc3\xa9",
        b"<\xc3\xa9",
    ]
)


def cleaned(doc: bytes, sizes: list[int], window: int) -> tuple[bytes, set[str]]:
    """The cleaned document and its repairs (their order is that in which the chunks
    show them first)."""
    cleaner = XmlCleaner(name_check_bytes=window)
    out: list[bytes] = []
    at = i = 0
    while at < len(doc):
        size = sizes[i % len(sizes)]
        out.append(cleaner.feed(doc[at : at + size]))
        at, i = at + size, i + 1
    out.append(cleaner.flush())
    return b"".join(out), set(cleaner.repairs)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(
    pieces=st.lists(PIECES, max_size=40),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    window=st.sampled_from([0, 1, 37, 300, 1 << 20]),
)
def test_repairs_do_not_depend_on_where_chunks_end(
    pieces: list[bytes], sizes: list[int], window: int
) -> None:
    doc = b'<?xml version="1.0"?>\n<feedback>' + b"".join(pieces) + b"</feedback>\n"
    assert cleaned(doc, sizes, window) == cleaned(doc, [len(doc)], window)


def test_every_split_point() -> None:
    doc = (
        b'<?xml version="1.0"?>\n<feedback><email><noreply@example.net></email>'
        b"<h>bad<example.net</h><i>a < b &amp; AT&T</i>" + b"<" + b"n" * 257 + b"@>"
        b"<" + b"n" * 256 + b"@></feedback>\n"
    )
    whole = cleaned(doc, [len(doc)], 1 << 20)
    assert whole[0].count(b"&lt;") == 4  # a name of 257 characters is left to the parser
    assert whole[1] == {"unescaped_lt", "unescaped_ampersand"}
    for window in (1 << 20, 200):
        expected = cleaned(doc, [len(doc)], window)
        for cut in range(1, len(doc)):
            cleaner = XmlCleaner(name_check_bytes=window)
            out = cleaner.feed(doc[:cut]) + cleaner.feed(doc[cut:]) + cleaner.flush()
            assert (out, set(cleaner.repairs)) == expected, cut
