"""The parser's version: what the core makes of a message, as a number.

Each archived message records the version that read it (``raw_messages.parser_version``).
Bump it, with a CHANGELOG entry, whenever the same bytes could come out differently: a
message that an older version did not store as reports (``not_a_report``,
``quarantined``) is read again when it arrives again, and by ``rua-sink reprocess``.
It is not the package's version: a release that changes nothing in parsing keeps it.

Messages archived before the number existed carry the package version (``0.1.0``) and
count as version 1.
"""

from __future__ import annotations

#: 2: a report whose month had no partition yet could be read as not_a_report or
#: quarantined (the retried attempt shared the message's file with the abandoned one);
#: wrapped reports and unescaped '<' repaired; Exim's failure reports read; a discarded
#: base64 part no longer quarantines its message.
PARSER_VERSION = 2
