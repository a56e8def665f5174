"""safepath.locate: which allowed root a path lies in, judged on its text."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.engine.safepath import Located, locate
from statehold.errors import InvalidArgument

ROOTS = (Path("/var/lib/kubelet"), Path("/srv/csi"))


def test_a_path_is_split_at_its_root() -> None:
    found = locate("/var/lib/kubelet/pods/u/volumes/v/mount", ROOTS)
    assert found == Located(Path("/var/lib/kubelet"), ("pods", "u", "volumes", "v", "mount"))
    assert found.name == "mount" and found.path == Path("/var/lib/kubelet/pods/u/volumes/v/mount")
    assert locate("/srv/csi/x", ROOTS).parts == ("x",)


@pytest.mark.parametrize("value", [
    "/var/lib/kubelet", "/var/lib/kubelet/", "/var/lib/kubeletx/a", "/etc/passwd", "relative/x",
    "/var/lib/kubelet/a/../b", "/var/lib/kubelet/./a", "/var/lib/kubelet//a",
])
def test_anything_not_strictly_inside_a_root_or_not_normalised_is_invalid(value: str) -> None:
    with pytest.raises(InvalidArgument):
        locate(value, ROOTS)


def test_a_root_is_also_matched_by_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "kubelet"
    real.mkdir(parents=True)
    link = tmp_path / "kubelet"
    link.symlink_to(real)
    found = locate(f"{real}/pods/p", (link,))
    assert found.root == link and found.parts == ("pods", "p")
