import struct

import pytest

from cosparse.compiler import zoo
from cosparse.compiler.emit import memory_images, write_images
from cosparse.compiler.images import BundleError, MemoryImage, pack_bundle, read_bundle
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.folding import Folding, LayerFold
from cosparse.compiler.lower import lower


def small_core():
    net = to_drain_order(zoo.random_network((12,), [("linear", 8, 2), ("global", 3, 5),
                                                   ("logits", 4, 1)], seed=3))
    return lower(net, Folding(layers={"fc0": LayerFold(2, 2), "fc2": LayerFold(1, 4)}))


def test_every_initialised_memory_gets_an_image(tmp_path):
    images = write_images(small_core(), tmp_path)
    names = [img.name for img in images]
    assert sum(n.endswith("overlayengine.weights") for n in names) == 2  # both layers
    assert any("requantizer" in n for n in names) and any("boost" in n for n in names)
    assert not any(".acc_" in n or "hist" in n for n in names)  # run-time state: no image
    for img in images:
        lines = (tmp_path / f"{img.name}.hex").read_text().split()
        assert len(lines) == img.depth
        assert [int(v, 16) for v in lines] == list(img.words)
        assert all(w < 1 << img.width for w in img.words)
    assert read_bundle((tmp_path / "bundle.bin").read_bytes()) == images


def test_images_follow_the_weights():
    a, b = memory_images(small_core()), memory_images(small_core())
    assert a == b  # deterministic
    net = to_drain_order(zoo.random_network((12,), [("linear", 8, 2), ("global", 3, 5),
                                                   ("logits", 4, 1)], seed=4))
    c = memory_images(lower(net, Folding(layers={"fc0": LayerFold(2, 2),
                                                       "fc2": LayerFold(1, 4)})))
    assert [i.name for i in c] == [i.name for i in a] and c != a


def test_bundle_rejects_damage():
    data = pack_bundle([MemoryImage("m", 12, (1, 2, 4095)), MemoryImage("n", 70, (1 << 69,))])
    assert read_bundle(data)[1].words == (1 << 69,)
    with pytest.raises(BundleError, match="corrupted or truncated"):
        read_bundle(data[:-9] + data[-8:])  # one byte missing
    flipped = bytearray(data)
    flipped[12] ^= 1
    with pytest.raises(BundleError, match="CRC"):
        read_bundle(bytes(flipped))
    with pytest.raises(BundleError, match="not a cosparse weight bundle"):
        read_bundle(b"XXXX" + data[4:])
    body = b"CSPB" + struct.pack("<HH", 9, 0)
    with pytest.raises(BundleError, match="version 9"):
        read_bundle(body + struct.pack("<I", __import__("zlib").crc32(body)))
