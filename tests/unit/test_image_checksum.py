"""Checkpoint images' block checksums."""

from __future__ import annotations


def test_image_block_checksums_are_crc32c_and_old_images_still_verify(tmp_path):
    """CRC-32C (the SSE4.2 instruction, or a table) of every 4 MiB block, checked against a reference; an
    image sealed with zlib's CRC-32 before still verifies, and a flipped byte is caught either way."""
    import os
    import zlib

    from xos.checkpoint import image

    def crc32c(data: bytes) -> int:
        crc = 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF

    assert image._crc(b"123456789") == 0xE3069283 == crc32c(b"123456789")
    sample = os.urandom(5000)
    assert image._crc(sample) == crc32c(sample)
    path = tmp_path / "pages.img"
    path.write_bytes(os.urandom(image.CHUNK * 3 + 12345))
    blocks = [path.read_bytes()[i:i + image.CHUNK] for i in range(0, path.stat().st_size, image.CHUNK)]
    import hashlib

    want = image.TAG + hashlib.sha256(b"".join(image._crc(b).to_bytes(4, "big") for b in blocks)).hexdigest()
    assert image._checksum(str(path)) == want
    old = image.OLD_TAG + hashlib.sha256(b"".join(zlib.crc32(b).to_bytes(4, "big") for b in blocks)).hexdigest()
    assert image._checksum(str(path), image.OLD_TAG) == old
    data = bytearray(path.read_bytes())
    data[image.CHUNK * 2 + 7] ^= 1
    path.write_bytes(bytes(data))
    assert image._checksum(str(path)) != want and image._checksum(str(path), image.OLD_TAG) != old
