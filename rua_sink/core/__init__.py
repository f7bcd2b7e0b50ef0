"""The pure core: bytes in, typed reports out. No sockets, no asyncio, no database."""
