"""DNS: the authorization check, the mail's SPF/DKIM/DMARC, who is behind a source address.

Nothing here touches the database: storing what the lookups find is for ``ingest`` and
``storage``.
"""
