"""python -m clstm.demo_nowcast: a small run reports its figures and writes a valid PNG."""

import struct
import subprocess
import sys
import zlib
from contextlib import redirect_stdout
from io import StringIO

import numpy as np

from clstm import demo_nowcast

SMALL = ["--size", "8", "--steps", "3", "--n-train", "24", "--n-test", "6", "--epochs", "1",
         "--filters", "2", "--horizon", "2", "--shapes", "1"]


def _read_png(path):
    """(width, height, pixels) of an 8-bit grayscale PNG of filter-0 rows, every CRC checked."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 0, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    assert np.all(rows[:, 0] == 0)
    return width, height, rows[:, 1:]


def test_write_png_round_trip(tmp_path):
    image = np.random.default_rng(0).random((7, 13))
    path = demo_nowcast.write_png(tmp_path / "a.png", image)
    width, height, pixels = _read_png(path)
    assert (width, height) == (13, 7)
    np.testing.assert_array_equal(pixels, np.round(image * 255).astype(np.uint8))


def test_demo_reports_and_writes_the_strip(tmp_path):
    out = StringIO()
    with redirect_stdout(out):
        results = demo_nowcast.main(SMALL + ["--image", str(tmp_path / "strip.png")])
    assert set(results["mse"]) == {"convlstm", "persistence", "pixel_lstm"}
    assert all(np.isfinite(v) and v >= 0 for v in results["mse"].values())
    assert [len(v) for v in results["forecast_mse"].values()] == [2, 2]
    assert results["image"] == str((tmp_path / "strip.png").resolve())
    assert results["image"] in out.getvalue()
    width, height, pixels = _read_png(results["image"])
    # 1 sample row of 8x8 frames, scale 4: 3 inputs | 2 true | 2 predicted, separators
    frames_width = 3 * 8 + 2 + 2 * 8 + 1 + 2 * 8 + 1 + 2 * 3
    rows = min(4, 6)
    assert (width, height) == (4 * frames_width, 4 * (rows * 8 + rows - 1))
    assert pixels.max() == 255 and pixels.min() == 0


def test_demo_command_line_help():
    done = subprocess.run([sys.executable, "-m", "clstm.demo_nowcast", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--horizon" in done.stdout
