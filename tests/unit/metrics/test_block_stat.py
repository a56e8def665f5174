from __future__ import annotations

from pathlib import Path

import pytest

from statehold.agent.storage_metrics import device_stat, parse_block_stat

# captured from /sys/block/loop3/stat after a 1 GiB direct write
LINE = ("     120        0     4096       37   262144        0  2097152    51234        0"
        "    40000    51271        0        0        0        0        0        0\n")


def test_sectors_become_bytes_and_milliseconds_seconds() -> None:
    st = parse_block_stat(LINE)
    assert (st.read_ios, st.read_bytes, st.read_seconds) == (120, 4096 * 512, 0.037)
    assert (st.write_ios, st.write_bytes, st.write_seconds) == (262144, 1 << 30, 51.234)


def test_a_short_line_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_block_stat("1 2 3")


def test_a_gone_device_has_no_stat(tmp_path: Path) -> None:
    assert device_stat("/dev/loop99", tmp_path) is None
    (tmp_path / "loop7").mkdir()
    (tmp_path / "loop7" / "stat").write_text(LINE)
    got = device_stat("/dev/loop7", tmp_path)
    assert got is not None and got.write_bytes == 1 << 30
