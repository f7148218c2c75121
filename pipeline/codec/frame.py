"""The one framing every signed EdgeVeil message uses: magic, length-prefixed sections, signature.

A frame is ``magic | section … | Ed25519 signature (64 bytes over every preceding byte)``, each
section a big-endian length (u16 or u32) followed by that many bytes. Model updates
(:mod:`pipeline.codec.codec`, magic ``b"EVU"`` + format byte) and global models
(:mod:`pipeline.codec.global_model`, ``b"EVM\\x01"``) differ only in their magic and sections, so
both are written by :func:`pack_frame` and read by :class:`FrameReader`, which raises the same
typed :class:`~pipeline.codec.exceptions.CodecError` reasons (``truncated``, ``too_large``,
``trailing_bytes``) for both.

Examples
--------
>>> from pipeline.codec.signing import generate_keypair, verify
>>> priv, pub = generate_keypair()
>>> blob = pack_frame(b"XY", [(U16, b"node"), (U32, b"{}")], private_key=priv)
>>> blob[:2], len(blob) == 2 + 2 + 4 + 4 + 2 + 64
(b'XY', True)
>>> r = FrameReader(memoryview(blob), start=2)
>>> bytes(r.section(U16, "node id")), bytes(r.section(U32, "header"))
(b'node', b'{}')
>>> verify(bytes(r.body), bytes(r.signature()), public_key=pub)
>>> cut = FrameReader(memoryview(blob[:-1]), start=2)
>>> bytes(cut.section(U16, "node id"))
b'node'
>>> cut.section(U32, "header")
Traceback (most recent call last):
...
pipeline.codec.exceptions.TruncatedError: truncated: input ends inside the header (77 bytes)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pipeline.codec.exceptions import TooLargeError, TruncatedError
from pipeline.codec.signing import SIGNATURE_SIZE, sign

__all__ = ["U16", "U32", "FrameReader", "pack_frame"]

#: section length prefixes (big-endian)
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")


def pack_frame(magic: bytes, sections: Iterable[tuple[struct.Struct, bytes]], *,
               private_key: bytes) -> bytes:
    """``magic`` + each section with its length prefix, signed with ``private_key``."""
    parts = [magic]
    for prefix, data in sections:
        parts += (prefix.pack(len(data)), data)
    body = b"".join(parts)
    return body + sign(body, private_key=private_key)


class FrameReader:
    """Reads the sections of one frame in order; the signature is the last 64 bytes.

    ``start`` is the offset after the magic (and format byte) the caller checked. The signature's
    presence is checked first, so a frame cut anywhere is ``truncated``; a section that runs into
    the signature is ``truncated`` too.
    """

    def __init__(self, view: memoryview, *, start: int) -> None:
        self.view = view
        self.pos = start
        self.end = len(view) - SIGNATURE_SIZE
        if self.end < start:
            raise TruncatedError("truncated", f"input ends inside the signature ({len(view)} bytes)")
        #: every signed byte (magic and sections)
        self.body = view[: self.end]

    def take(self, size: int, what: str) -> memoryview:
        """The next ``size`` bytes of the body."""
        if self.pos + size > self.end:
            raise TruncatedError("truncated", f"input ends inside the {what} ({len(self.view)} bytes)")
        out = self.view[self.pos : self.pos + size]
        self.pos += size
        return out

    def section(self, prefix: struct.Struct, what: str, *, limit: int | None = None) -> memoryview:
        """The next length-prefixed section; ``too_large`` if its length exceeds ``limit``."""
        (size,) = prefix.unpack(self.take(prefix.size, f"{what} length"))
        if limit is not None and size > limit:
            raise TooLargeError("too_large", f"{what} of {size} bytes exceeds {limit}")
        return self.take(size, what)

    def signature(self) -> memoryview:
        """The signature, after checking that no byte is left between the sections and it."""
        if self.pos != self.end:
            raise TruncatedError("trailing_bytes", f"{self.end - self.pos} bytes after the last section")
        return self.view[self.end :]
