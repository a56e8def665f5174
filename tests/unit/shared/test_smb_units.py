"""SMB pieces that need no server: native ``cifs`` mount options (this kernel has no cifs
module, so the mount itself is not tested anywhere here: the command line is), metadata
replaced in steps, names that clash on a case-insensitive share, and the EBUSY a kernel SMB
client answers for a file or directory removed while another client has it open ("delete
pending"; smbnetfs, the FUSE client the integration tests use, retries it internally and
never shows it, so the errno is injected here). Also GlusterFS's EEXIST for a lock file two
clients create at once (seen once in a full run), injected the same way."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from statehold.errors import FailedPrecondition, InvalidArgument, Unavailable
from statehold.shared import metadata as md
from statehold.shared.names import case_clashes
from statehold.shared.registry import RootSpec
from statehold.shared.share import ShareSpec, check_credentials, mount_argv


def test_cifs_mount_line_names_the_credentials_file_never_a_password() -> None:
    spec = ShareSpec.parse("//files.example/data/sub", "cifs", "vers=3.1.1,port=4450",
                           credentials="/etc/statehold/smb/credentials")
    argv = mount_argv(spec, Path("/var/lib/statehold/shared/shares/k"))
    assert argv == ["mount", "-t", "cifs", "-o",
                    "vers=3.1.1,port=4450,dir_mode=0777,file_mode=0777,mfsymlinks,"
                    "credentials=/etc/statehold/smb/credentials",
                    "//files.example/data/sub", "/var/lib/statehold/shared/shares/k"]
    assert spec.servers() == [("files.example", 4450)]


def test_cifs_defaults_yield_to_given_options_and_ro_comes_last() -> None:
    spec = ShareSpec.parse("//h/s", "smb", "file_mode=0640,uid=1000")
    assert spec.mount_options(readonly=True) == ["file_mode=0640", "uid=1000", "dir_mode=0777",
                                                 "mfsymlinks", "guest", "ro"]
    assert spec.servers() == [("h", 445)]


def test_server_and_share_parameters_become_an_unc_source() -> None:
    spec = RootSpec.from_parameters({"server": "files.example", "share": "data", "fsType": "cifs",
                                     "credentialsFile": "/etc/smb/creds"})
    assert spec.share is not None and spec.share.source == "//files.example/data"
    context = spec.to_context()
    assert context["credentialsFile"] == "/etc/smb/creds" and "creds" not in context["mountOptions"]
    assert RootSpec.from_parameters(context) == spec  # a node learns the same root
    other = RootSpec.from_parameters({**context, "credentialsFile": "/etc/smb/other"})
    assert other.key != spec.key  # another user of the share is another mount


@pytest.mark.parametrize("options", ["username=alice", "password=hunter2", "user=a", "pass=x",
                                     "credentials=/etc/x", "password2=y"])
def test_credentials_in_mount_options_are_refused(options: str) -> None:
    with pytest.raises(InvalidArgument, match="credentialsFile"):
        ShareSpec.parse("//h/s", "cifs", options)


@pytest.mark.parametrize(("source", "fstype", "credentials"), [
    ("h:/s", "glusterfs", "/etc/x"),       # credentials are for cifs only
    ("//h/s", "cifs", "relative/creds"),
    ("//h/s", "cifs", "/etc/../creds"),
    ("//h/s", "cifs", "/etc/a,b"),
    ("//h", "cifs", ""),
    ("/h/s", "cifs", ""),
    ("//h/s x", "cifs", ""),
])
def test_bad_cifs_parameters_are_invalid(source: str, fstype: str, credentials: str) -> None:
    with pytest.raises(InvalidArgument):
        ShareSpec.parse(source, fstype, "", credentials=credentials)


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("username=alice\npassword=secret\n")
    creds.chmod(0o644)
    spec = ShareSpec.parse("//h/s", "cifs", "", credentials=str(creds))
    with pytest.raises(FailedPrecondition, match="defaultMode: 0400"):
        check_credentials(spec)
    creds.chmod(0o400)
    check_credentials(spec)
    with pytest.raises(FailedPrecondition, match="No such file"):
        check_credentials(ShareSpec.parse("//h/s", "cifs", "", credentials=str(tmp_path / "missing")))


def test_replace_in_steps_reads_whole_and_settles_a_cut(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    md.write_json(path, {"version": 1, "n": 1}, atomic_replace=False)
    md.write_json(path, {"version": 1, "n": 2}, atomic_replace=False)
    assert md.read_json(path) == {"version": 1, "n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json"]
    os.rename(path, tmp_path / "v.json.next")  # cut after the old one was removed
    assert md.read_json(path) == {"version": 1, "n": 2} and md.json_names(tmp_path) == ["v"]
    md.write_json(path, {"version": 1, "n": 3}, atomic_replace=False)
    assert md.read_json(path) == {"version": 1, "n": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json"]
    (tmp_path / "v.json.next").write_text('{"version": 1, "n": 9}')  # cut before removal
    assert md.read_json(path) == {"version": 1, "n": 3}  # readers prefer the committed file
    md.write_json(path, {"version": 1, "n": 4}, atomic_replace=False)
    assert md.read_json(path) == {"version": 1, "n": 4}
    md.remove_json(path)
    assert md.read_json(path) is None and list(tmp_path.iterdir()) == []


def test_case_clashes_are_found_per_directory() -> None:
    assert case_clashes(["README", "readme", "docs", "Docs/a", "docs/a", "x/y", "X"]) == [
        ("Docs/a", "docs/a"), ("README", "readme")]
    assert case_clashes(["a", "b", "a/b", "b/a"]) == []


def _busy_first(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, target: Path,
               times: int) -> list[int]:
    """``owner.name`` refuses ``target`` with EBUSY ``times`` times, then behaves."""
    real = getattr(owner, name)
    seen = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        path = args[0]
        if Path(path) == target and seen[0] < times:
            seen[0] += 1
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return seen


def test_a_sidecar_delete_pending_on_the_server_is_read_once_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.json"
    md.write_json(path, {"version": 1, "n": 2}, atomic_replace=False)
    seen = _busy_first(monkeypatch, Path, "read_text", path, 3)
    assert md.read_json(path) == {"version": 1, "n": 2}  # not Unavailable, not None
    assert seen == [3]


def test_a_sidecar_that_stays_busy_is_unavailable_not_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.json"
    md.write_json(path, {"version": 1, "n": 2}, atomic_replace=False)
    monkeypatch.setattr(md, "STALE_RETRY_SECONDS", 0.05)
    _busy_first(monkeypatch, Path, "read_text", path, 10**9)
    with pytest.raises(Unavailable):
        md.read_json(path)


def test_a_lock_directory_still_being_removed_is_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / md.META_DIR).mkdir()
    lock = md.meta_dir(tmp_path) / md.LOCK_DIR
    seen = _busy_first(monkeypatch, os, "mkdir", lock, 2)
    with md.locked(tmp_path, shared_locks=False):
        assert (lock / "owner.json").exists()
    assert seen == [2] and not lock.exists()


def test_a_lock_directory_refused_otherwise_fails_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / md.META_DIR).mkdir()
    lock = md.meta_dir(tmp_path) / md.LOCK_DIR
    real = os.mkdir

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == lock:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(Unavailable, match="cannot take lock"), md.locked(tmp_path, shared_locks=False):
        pass


def _exists_first(monkeypatch: pytest.MonkeyPatch, target: Path, times: int) -> list[int]:
    """``os.open`` of ``target`` with O_CREAT answers EEXIST ``times`` times, as GlusterFS's
    FUSE client does when another client created the file between lookup and create."""
    real = os.open
    seen = [0]

    def wrapped(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == target and flags & os.O_CREAT and seen[0] < times:
            seen[0] += 1
            real(path, flags, *args, **kwargs)  # the other client's create
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", wrapped)
    return seen


def test_a_lock_file_created_by_another_client_meanwhile_is_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / md.META_DIR).mkdir()
    seen = _exists_first(monkeypatch, md.meta_dir(tmp_path) / "lock", 2)
    with md.locked(tmp_path):
        pass
    assert seen == [2]


def test_a_lock_file_that_never_opens_is_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / md.META_DIR).mkdir()
    _exists_first(monkeypatch, md.meta_dir(tmp_path) / "lock", 10**9)
    with pytest.raises(Unavailable, match="cannot open lock"), md.locked(tmp_path):
        pass
