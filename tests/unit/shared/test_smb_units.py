"""SMB pieces that need no server: native ``cifs`` mount options (this kernel has no cifs
module, so the mount itself is not tested anywhere here: the command line is), metadata
replaced in steps, and names that clash on a case-insensitive share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.errors import FailedPrecondition, InvalidArgument
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
