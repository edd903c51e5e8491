"""A delaying TCP proxy: the store, ``delay`` milliseconds away in each direction.

This kernel has no ``netem``; the benchmark's latency mode puts this in front of the
local SeaweedFS so that every request pays a real round trip (2 x delay), as it does
against OBS from a training node. Every chunk read from one side is written to the
other ``delay`` ms after it arrived, in order, so bandwidth is not throttled, only
latency added. It runs as its own process (asyncio, one thread) so it never competes
for the benchmark's GIL; the benchmark checks that a 0 ms proxy costs nothing.

    python -m devtools.delayproxy --upstream 127.0.0.1:8333 --delay-ms 15 --port-file F
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def receive() -> None:
        try:
            while True:
                data = await reader.read(256 * 1024)
                queue.put_nowait((loop.time() + delay, data or None))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), None))

    async def send() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(receive(), send())


async def _serve(upstream: tuple[str, int], delay: float, sock: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))
        finally:
            writer.close()
            up_writer.close()

    live: set[asyncio.Task[None]] = set()

    def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own reference: asyncio drops its own when the client disconnects, and a
        # handler still delaying the last bytes would be garbage-collected mid-flight.
        task = asyncio.ensure_future(handle(reader, writer))
        live.add(task)
        task.add_done_callback(live.discard)

    server = await asyncio.start_server(on_client, sock=sock, backlog=1024)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="host:port of the real server")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    ap.add_argument("--port-file", required=True, help="where to write the listening port")
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(args.port_file).write_text(str(sock.getsockname()[1]))
    asyncio.run(_serve((host, int(port)), args.delay_ms / 1000, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
