#!/usr/bin/env python3
"""A backend that accepts WebSocket-style upgrades and then holds them.

Usage: upgrade_backend.py PORT

A request with an Upgrade header is answered 101 and the connection is
then held, silent, until the client closes it; any other request (a
health check) gets 200 "ok". Used by bench/idle-memory.sh to measure the
memory of an idle upgraded connection in Shoal.
"""

import asyncio
import resource
import sys

SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"\nupgrade:" in head.lower():
                writer.write(SWITCHED)
                await writer.drain()
                while await reader.read(4096):
                    pass
                break
            writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
