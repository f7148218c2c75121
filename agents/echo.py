"""The foundation's round-trip agent: proves a real faust worker consumes and produces.

For each message on ``edgeveil.echo.in`` it writes one JSON record to ``edgeveil.echo.out`` that
names the input's key, partition and offset and the order in which the agent saw it.
"""

from __future__ import annotations

import itertools
import json

from agents.app import app
from agents.streams import raw_topic
from agents.topics import ECHO_IN, ECHO_OUT

echo_in = raw_topic(app, ECHO_IN)
echo_out = raw_topic(app, ECHO_OUT)

_seen = itertools.count()


@app.agent(echo_in)
async def echo(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        msg = event.message
        record = {
            "key": msg.key.decode() if msg.key else None,
            "value": msg.value.decode(errors="replace"),
            "partition": msg.partition,
            "offset": msg.offset,
            "seen": next(_seen),
        }
        await echo_out.send(key=msg.key, value=json.dumps(record).encode())
