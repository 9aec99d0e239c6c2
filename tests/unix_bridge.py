"""Forward every connection between a loopback TCP port and a Unix socket, until killed.

    python tests/unix_bridge.py tcp-to-unix HOST PORT SOCKET   # listen on HOST:PORT, connect to SOCKET
    python tests/unix_bridge.py unix-to-tcp SOCKET HOST PORT   # listen on SOCKET, connect to HOST:PORT

Two of them carry one port across a network namespace (tests/ray_cluster.py): a Unix socket is a file,
and both namespaces see the same files."""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(mode: str, args: list[str]) -> None:
    if mode == "tcp-to-unix":
        host, port, path = args

        async def to_unix(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(path)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        server = await asyncio.start_server(to_unix, host, int(port))
    elif mode == "unix-to-tcp":
        path, host, port = args

        async def to_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        server = await asyncio.start_unix_server(to_tcp, path)
    else:
        raise SystemExit(__doc__)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
