"""
Undoing a body's Content-Encoding within a budget: a few hundred bytes of brotli can unpack to
gigabytes (a hostile observed vendor, a broken gateway, a client trying the DLP scan), so no
decoder here ever produces more than it was allowed.

Token usage decodes responses chunk by chunk as they stream (`BoundedDecoder`); the prompt
scan decodes a whole request body it holds (`decode_body`), zstd included.
"""

from __future__ import annotations

import sys
import zlib

try:
    import brotli  # a dependency of mitmproxy's
except ImportError:  # pragma: no cover
    brotli = None
try:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd  # a dependency of mitmproxy's
except ImportError:  # pragma: no cover
    zstd = None

_BROTLI_ERRORS = (brotli.error,) if brotli is not None else ()
DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error, *_BROTLI_ERRORS)  # corrupt data

# What a compressed response may decode to before we stop reading its usage.
DECODED_LIMIT = 8 * 1024 * 1024


class DecodedTooLarge(ValueError):
    """A compressed body decodes to more than its budget."""


class UnknownEncoding(ValueError):
    """A Content-Encoding no decoder here undoes."""


_BROTLI_STEP = 256 * 1024


class BoundedDecoder:
    """Undoes a Content-Encoding chunk by chunk (gzip, deflate, br), never producing more than
    `budget` bytes in all: past it, DecodedTooLarge. `ok` is False for an unknown encoding."""

    def __init__(self, encoding: str, budget: int = DECODED_LIMIT):
        encoding = encoding.strip().lower()
        self._z = self._br = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif encoding == "br" and brotli is not None:
            self._br = brotli.Decompressor()
        self.ok = encoding in ("", "identity") or self._z is not None or self._br is not None
        self._budget = self._left = budget

    def _inflate(self, chunk: bytes) -> bytes:
        """gzip member after member, as Python's and Go's readers (and so servers) decode a
        body: a credential in the second member is in the body too. max_length bounds the
        output; one byte past the budget is enough to know it is exceeded. Bytes after a
        member that are not another member are corrupt (zlib.error), never skipped."""
        assert self._z is not None
        pieces: list[bytes] = []
        produced = 0
        while True:
            pieces.append(self._z.decompress(chunk, self._left + 1 - produced))
            produced += len(pieces[-1])
            if not self._z.eof or not self._z.unused_data or produced > self._left:
                return b"".join(pieces)
            chunk = self._z.unused_data
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)

    def refill(self) -> None:
        """A fresh budget (a stream decoded chunk by chunk, each chunk bounded)."""
        self._left = self._budget

    def decode(self, chunk: bytes) -> bytes:
        if self._z is not None:
            data = self._inflate(chunk)
        elif self._br is not None:
            # brotli's output limit is a hint (its buffer grows in steps): ask in small steps
            # and count as it goes, never holding more than a step past the budget
            pieces = [self._br.process(chunk, output_buffer_limit=_BROTLI_STEP)]
            produced = len(pieces[0])
            while not self._br.can_accept_more_data():
                if produced > self._left:
                    break
                pieces.append(self._br.process(b"", output_buffer_limit=_BROTLI_STEP))
                produced += len(pieces[-1])
            data = b"".join(pieces)
        else:
            return chunk
        self._left -= len(data)
        if self._left < 0:
            raise DecodedTooLarge(f"the body decodes to more than {self._budget} bytes")
        return data


def decode_body(data: bytes, encoding: str, budget: int) -> bytes:
    """A whole body, decoded: at most `budget` bytes or DecodedTooLarge; UnknownEncoding for
    what we cannot undo (several codings, or zstd without its decoder)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "zstd":
        if zstd is None:  # pragma: no cover
            raise UnknownEncoding("zstd (no zstd decoder is installed)")
        return _decode_zstd(data, budget)
    decoder = BoundedDecoder(encoding, budget)
    if not decoder.ok:
        raise UnknownEncoding(encoding)
    try:
        return decoder.decode(data)
    except (zlib.error, *_BROTLI_ERRORS) as e:
        raise ValueError(f"the {encoding} body is corrupt ({e})") from None


def _decode_zstd(data: bytes, budget: int) -> bytes:
    out = bytearray()
    try:
        while data:  # frame after frame, each bounded by what is left of the budget
            decompressor = zstd.ZstdDecompressor()
            out += decompressor.decompress(data, budget + 1 - len(out))
            if len(out) > budget:
                raise DecodedTooLarge(f"the body decodes to more than {budget} bytes")
            data = decompressor.unused_data if decompressor.eof else b""
    except zstd.ZstdError as e:
        raise ValueError(f"the zstd body is corrupt ({e})") from None
    return bytes(out)
