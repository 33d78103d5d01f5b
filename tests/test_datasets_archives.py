"""Safe archive unpacking: traversal, absolute paths and escaping links are refused."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from synapse_toolkit.datasets import fetch, resolve_dataset
from synapse_toolkit.datasets.archives import safe_extract
from synapse_toolkit.errors import DataError
from tests.datasets_fixtures import FileServer, data_dir, registry_with, server, sha256

__all__ = ["data_dir", "server"]  # pytest fixtures used below


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def make_tar(
    members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None, mode: str = "w"
) -> bytes:
    """``links`` maps a member name to (tarfile.SYMTYPE or LNKTYPE, link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_zip_and_tar_unpack(tmp_path: Path) -> None:
    files = {"top/a.txt": b"a", "top/sub/b.txt": b"bb"}
    for fmt, data in (("zip", make_zip(files)), ("tar", make_tar(files, mode="w:gz"))):
        dest = tmp_path / f"out_{fmt}"
        safe_extract(_write(tmp_path, f"x.{fmt}", data), dest, fmt)  # type: ignore[arg-type]
        assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"bb"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tar_internal_symlink_is_allowed(tmp_path: Path) -> None:
    data = make_tar({"d/a.txt": b"a"}, {"d/link": (tarfile.SYMTYPE, "a.txt")})
    safe_extract(_write(tmp_path, "x.tar", data), tmp_path / "out", "tar")
    assert (tmp_path / "out" / "d" / "link").read_bytes() == b"a"


BAD_ZIPS = {
    "traversal": (make_zip({"ok.txt": b"1", "../evil.txt": b"x"}), "'..'"),
    "nested traversal": (make_zip({"a/../../evil.txt": b"x"}), "'..'"),
    "absolute": (make_zip({"/tmp/evil.txt": b"x"}), "absolute"),
    "drive letter": (make_zip({"C:/evil.txt": b"x"}), "absolute"),
    "backslash traversal": (make_zip({"..\\evil.txt": b"x"}), "'..'"),
    "symlink": (make_zip({}, {"link": "/etc/passwd"}), "symbolic link"),
}
BAD_TARS = {
    "traversal": (make_tar({"ok.txt": b"1", "../evil.txt": b"x"}), "'..'"),
    "absolute": (make_tar({"/tmp/evil.txt": b"x"}), "absolute"),
    "escaping symlink": (make_tar({}, {"link": (tarfile.SYMTYPE, "../../etc/passwd")}), "outside"),
    "absolute symlink": (make_tar({}, {"link": (tarfile.SYMTYPE, "/etc/passwd")}), "outside"),
    "escaping hardlink": (make_tar({}, {"link": (tarfile.LNKTYPE, "../x")}), "outside"),
    "device": (make_tar({}, {"dev": (tarfile.CHRTYPE, "")}), "special file"),
}


@pytest.mark.parametrize(
    ("fmt", "case"), [("zip", c) for c in BAD_ZIPS] + [("tar", c) for c in BAD_TARS]
)
def test_malicious_archives_are_refused(tmp_path: Path, fmt: str, case: str) -> None:
    data, reason = (BAD_ZIPS if fmt == "zip" else BAD_TARS)[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = _write(work, f"bad.{fmt}", data)
    with pytest.raises(DataError, match=reason) as err:
        safe_extract(archive, work / "out", fmt)  # type: ignore[arg-type]
    assert str(archive) in str(err.value)
    # nothing was written: no destination, no temporary folder, nothing outside
    assert sorted(p.name for p in work.iterdir()) == [f"bad.{fmt}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = _write(tmp_path, "broken.zip", b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"not a readable zip file"):
        safe_extract(archive, tmp_path / "out", "zip")


def test_fetch_unpacks_archive_entries(server: FileServer, data_dir: Path) -> None:
    data = make_zip({"neurofinder.00.00/info.json": b"{}", "neurofinder.00.00/images/0.tif": b"t"})
    server.files["nf.zip"] = data
    registry = registry_with(
        {"name": "nf/00.00", "url": server.url("nf.zip"), "sha256": sha256(data)}
    )
    (path,) = fetch("nf/00.00", registry=registry)
    assert path == data_dir / "nf" / "00.00" / "contents" / "neurofinder.00.00"
    assert (path / "images" / "0.tif").read_bytes() == b"t"
    assert resolve_dataset("nf/00.00", registry=registry, download=False) == path
    assert len(server.requests) == 1


def test_fetch_refuses_malicious_archive(server: FileServer, data_dir: Path) -> None:
    data = make_zip({"../../escaped.txt": b"x"})
    server.files["evil.zip"] = data
    registry = registry_with(
        {"name": "t/evil", "url": server.url("evil.zip"), "sha256": sha256(data)}
    )
    with pytest.raises(DataError, match=r"refusing member '../../escaped.txt'"):
        fetch("t/evil", registry=registry)
    assert not (data_dir / "t" / "evil" / "contents").exists()
    assert not list(data_dir.parent.rglob("escaped.txt"))
