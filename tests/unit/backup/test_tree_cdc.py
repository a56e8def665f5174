"""Content-defined chunking of file trees (issue 15, format §11.8): in a version 2
repository a tree backup cuts its files by content, so bytes inserted into or removed from
the middle of a file cost a few new chunks instead of everything after the edit; the
chunks' lengths are in the manifest, which is version 2 so that an older release refuses it
instead of restoring it with fixed lengths."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statehold.backup.manifest import Manifest, decode
from statehold.backup.repository import Repository
from statehold.backup.store import MemoryStore
from statehold.backup.tree import CDC_READ, backup_tree, chunking_for, restore_tree
from statehold.backup.verifying import verify
from statehold.errors import FailedPrecondition

KiB = 1 << 10
MiB = 1 << 20
CS = 64 * KiB  # small chunks: many cuts in small files, fast tests


def _repo(version: int = 2) -> Repository:
    if version == 1:
        return Repository.init(MemoryStore(), "pw", chunk_size=CS)
    return Repository.init(MemoryStore(), "pw", version=2, chunk_size=CS, pack_size=MiB)


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _head(repo: Repository, m: Manifest) -> dict[str, object]:
    raw = repo.get_blob(f"manifests/{m.backup_id}")
    (hlen,) = struct.unpack_from(">I", raw, 0)
    return dict(json.loads(raw[4 : 4 + hlen]))


def test_a_version_2_tree_is_cut_by_content_and_says_so(tmp_path: Path) -> None:
    repo = _repo()
    src = tmp_path / "src"
    src.mkdir()
    body = _random(3 * MiB + 123, 1)
    (src / "db.bin").write_bytes(body)
    m = backup_tree(repo, src, volume="shared/a")
    assert m.chunking == chunking_for(repo) == {"method": "fastcdc-2020", "min": CS // 4,
                                                  "avg": CS, "max": 4 * CS}
    [entry] = m.tree or []
    lengths = [c[2] for c in entry["chunks"]]
    assert sum(lengths) == len(body)  # every byte in exactly one chunk, lengths recorded
    assert len(set(lengths)) > 1 and max(lengths) <= 4 * CS  # cut by content, not aligned
    offsets = [c[0] for c in entry["chunks"]]
    assert offsets == [sum(lengths[:i]) for i in range(len(lengths))]
    head = _head(repo, m)
    assert head["version"] == 2 and head["chunking"] == m.chunking
    restore_tree(repo, m.backup_id, tmp_path / "out")
    assert (tmp_path / "out" / "db.bin").read_bytes() == body
    assert verify(repo, deep=True).ok


@pytest.mark.parametrize("chunk_size", [64 * KiB, 4 * MiB, 16 * MiB])
def test_every_chunk_size_a_repository_may_have_cuts_by_content(tmp_path: Path,
                                                               chunk_size: int) -> None:
    """64 KiB..16 MiB are valid repository chunk sizes (format §5); FastCDC's own bounds
    (average at most 4 MiB, maximum at most 16 MiB) must not make any of them fail."""
    repo = Repository.init(MemoryStore(), "pw", version=2, chunk_size=chunk_size, pack_size=MiB)
    src = tmp_path / "src"
    src.mkdir()
    body = _random(9 * MiB + 5, 8)
    (src / "f").write_bytes(body)
    m = backup_tree(repo, src, volume="shared/a")
    assert m.chunking is not None and m.chunking["avg"] == min(chunk_size, 4 * MiB)
    restore_tree(repo, m.backup_id, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == body


def test_bytes_inserted_in_the_middle_cost_only_the_chunks_around_them(tmp_path: Path) -> None:
    """The reason for content-defined chunking; version 1's fixed slices are the contrast."""
    body = _random(8 * MiB, 2)
    edited = body[: 3 * MiB] + b"inserted by an editor" + body[3 * MiB :]
    new_bytes: dict[int, int] = {}
    for version in (1, 2):
        repo = _repo(version)
        src = tmp_path / f"v{version}"
        src.mkdir()
        (src / "f").write_bytes(body)
        first = backup_tree(repo, src, volume="shared/a")
        (src / "f").write_bytes(edited)
        second = backup_tree(repo, src, volume="shared/a", parent=first)
        assert second.stats.bytes_read == len(edited)  # the file changed: read in full
        new_bytes[version] = second.stats.bytes_new
        restore_tree(repo, second.backup_id, tmp_path / f"out{version}")
        assert (tmp_path / f"out{version}" / "f").read_bytes() == edited
    # fixed slices: everything after the insertion shifted, ~5 MiB stored again
    assert new_bytes[1] >= 5 * MiB
    # by content: the chunk holding the insertion and at most its neighbours (max 4 * CS each)
    assert new_bytes[2] <= 3 * 4 * CS


def test_zero_runs_are_not_stored_and_restore_as_zeros(tmp_path: Path) -> None:
    repo = _repo()
    src = tmp_path / "src"
    src.mkdir()
    body = _random(300 * KiB, 3) + bytes(2 * MiB) + _random(200 * KiB, 4)
    (src / "sparse").write_bytes(body)
    m = backup_tree(repo, src, volume="shared/a")
    [entry] = m.tree or []
    stored = sum(c[2] for c in entry["chunks"])
    assert stored < len(body) - MiB  # the zero chunks in the middle are omitted
    restore_tree(repo, m.backup_id, tmp_path / "out")
    assert (tmp_path / "out" / "sparse").read_bytes() == body


def test_a_parent_cut_another_way_is_not_reused(tmp_path: Path) -> None:
    """Unchanged files reuse the parent's chunk list only when it was cut the same way:
    fixed offsets read as content-defined lengths (or the reverse) would restore garbage."""
    repo = _repo()
    src = tmp_path / "src"
    src.mkdir()
    body = _random(MiB + 5, 5)
    (src / "f").write_bytes(body)
    cdc = backup_tree(repo, src, volume="shared/a")
    fixed = Manifest(**{**{f: getattr(cdc, f) for f in Manifest.__dataclass_fields__},
                        "chunking": None, "backup_id": cdc.backup_id + "x"})
    again = backup_tree(repo, src, volume="shared/a", parent=fixed)
    assert again.parent is None and again.stats.bytes_read == len(body)
    same = backup_tree(repo, src, volume="shared/a", parent=cdc)
    assert same.parent == cdc.backup_id and same.stats.bytes_read == 0


def test_a_file_that_grows_while_read_is_backed_up_at_its_listed_size(tmp_path: Path) -> None:
    """The reader stops at the size the listing saw; more than one read's worth is cut."""
    repo = _repo()
    src = tmp_path / "src"
    src.mkdir()
    body = _random(CDC_READ + 3 * MiB, 6)
    (src / "log").write_bytes(body)
    m = backup_tree(repo, src, volume="shared/a",
                    progress=lambda done, total: _grow(src / "log", done))
    restore_tree(repo, m.backup_id, tmp_path / "out")
    assert (tmp_path / "out" / "log").read_bytes() == body


def _grow(path: Path, done: int) -> None:
    if done and path.stat().st_size < 32 * MiB:
        with open(path, "ab") as f:
            f.write(b"appended after the listing" * 1000)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 700 * KiB), min_size=1, max_size=5),
       edits=st.lists(st.tuples(st.integers(0, 4), st.floats(0, 1), st.integers(-4096, 4096)),
                      max_size=6),
       seed=st.integers(0, 2**32))
def test_random_files_and_random_edits_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                                  sizes: list[int],
                                                  edits: list[tuple[int, float, int]],
                                                  seed: int) -> None:
    base = tmp_path_factory.mktemp("cdc")
    repo = _repo()
    src = base / "src"
    src.mkdir()
    files = {f"f{i}": _random(n, seed + i) for i, n in enumerate(sizes)}
    for name, body in files.items():
        (src / name).write_bytes(body)
    first = backup_tree(repo, src, volume="shared/p")
    for which, where, delta in edits:  # inserts (delta > 0) and removals (delta < 0)
        name = f"f{which % len(files)}"
        body = files[name]
        at = int(where * len(body))
        body = body[:at] + _random(delta, seed ^ at) + body[at:] if delta > 0 \
            else body[:at] + body[at - delta :]
        files[name] = body
        path = src / name
        path.write_bytes(body)
        os.utime(path, ns=(path.stat().st_mtime_ns + 1, path.stat().st_mtime_ns + 1))
    second = backup_tree(repo, src, volume="shared/p", parent=first)
    for m, want in ((second, files),):
        out = base / f"out-{m.backup_id}"
        restore_tree(repo, m.backup_id, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == want
    assert verify(repo, deep=True).ok


def test_a_manifest_cut_by_an_unknown_method_is_refused_not_misread(tmp_path: Path) -> None:
    repo = _repo()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(_random(200 * KiB, 7))
    m = backup_tree(repo, src, volume="shared/a")
    head = m.header()
    head["chunking"] = {**head["chunking"], "method": "rabin-1999"}
    raw = json.dumps(head).encode()
    with pytest.raises(FailedPrecondition, match="rabin-1999"):
        decode(struct.pack(">I", len(raw)) + raw, "manifests/x")
