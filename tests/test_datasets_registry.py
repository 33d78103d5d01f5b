"""The registry: shipped TOML files, validation, groups, plugin hook, bundled files, models."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest

import synapse_toolkit.plugin_manager as plugin_manager
from synapse_toolkit.datasets import (
    DatasetRegistry,
    fetch,
    load_registry,
    model_path,
    registry_dir,
    resolve_dataset,
)
from synapse_toolkit.errors import DataError
from synapse_toolkit.hookspecs import hookimpl
from tests.datasets_fixtures import FileServer, data_dir, registry_with, server, sha256

__all__ = ["data_dir", "server"]  # pytest fixtures used below

REPO = Path(__file__).resolve().parents[1]


# -- the shipped registry --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> DatasetRegistry:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped files load without any warning
        return load_registry(plugins=False)


def test_registry_dir_is_the_source_tree_registry() -> None:
    assert registry_dir() == REPO / "registry"
    assert (registry_dir() / "datasets.toml").is_file()
    assert (registry_dir() / "models.toml").is_file()


def test_registry_dir_prefers_the_wheel_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synapse_toolkit

    package = tmp_path / "site-packages" / "synapse_toolkit"
    (package / "_registry").mkdir(parents=True)
    monkeypatch.setattr(synapse_toolkit, "__file__", str(package / "__init__.py"))
    assert registry_dir() == package / "_registry"
    (package / "_registry").rmdir()
    with pytest.raises(DataError, match="registry files are missing"):
        registry_dir()


def test_cremi_entries_are_pinned_with_published_hashes(shipped: DatasetRegistry) -> None:
    hashes = {
        "A": "4c563d1b78acb2bcfb3ea958b6fe1533422f7f4a19f3e05b600bfa11430b510d",
        "B": "887e85521e00deead18c94a21ad71f278d88a5214c7edeed943130a1f4bb48b8",
        "C": "2874496f224d222ebc29d0e4753e8c458093e1d37bc53acd1b69b19ed1ae7052",
    }
    assert [e.name for e in shipped.expand("cremi")] == [f"cremi/sample_{s}" for s in "ABC"]
    for s, digest in hashes.items():
        entry = shipped.get(f"cremi/sample_{s}")
        assert entry.url == f"https://cremi.org/static/data/sample_{s}_20160501.hdf"
        assert entry.sha256 == digest
        assert entry.voxel_size_nm == (40.0, 4.0, 4.0) and entry.axis_order == "zyx"
        assert "volumes/raw" in entry.datasets and entry.citation and entry.licence
        assert entry.size is None  # not published: unknown rather than invented
    padded = shipped.expand("cremi/padded")
    assert [e.url for e in padded] == [
        f"https://cremi.org/static/data/sample_{s}_padded_20160501.hdf" for s in "ABC"
    ]
    test = shipped.expand("cremi/test")
    assert [e.local_filename for e in test] == [f"sample_{s}+_padded_20160601.hdf" for s in "ABC"]
    assert all(not e.pinned for e in padded + test)


def test_snemi_ac3ac4_entries(shipped: DatasetRegistry) -> None:
    base = "http://brainiac2.mit.edu/SNEMI3D/sites/default/files/"
    assert [e.url for e in shipped.expand("snemi3d")] == [
        base + f for f in ("train-input.zip", "train-labels.zip", "test-input.zip")
    ]
    train, test = shipped.expand("snemi3d/h5")
    assert train.url == "https://oc.embl.de/index.php/s/43iMotlXPyAB39z/download"
    assert train.sha256 == "5b130a24d9eb23d972fede0f1a403bc05f6808b361cfa22eff23b930b12f0615"
    assert test.url == "https://oc.embl.de/index.php/s/aRhphk35H23De2s/download"
    assert test.sha256 == "3df3920a0ddec6897105845f842b2665d37a47c2d1b96d4f4565682e315a59fa"
    assert train.local_filename == "snemi_train.h5"
    ac = shipped.get("ac3ac4")
    assert ac.url == "https://software.rc.fas.harvard.edu/lichtman/vast/AC3AC4Package.zip"
    assert ac.archive_format == "zip"


def test_neurofinder_entries(shipped: DatasetRegistry) -> None:
    train = [e.name.split("/")[1] for e in shipped.expand("neurofinder")]
    assert train == [f"00.{i:02d}" for i in range(12)] + [
        "01.00", "01.01", "02.00", "02.01", "03.00", "04.00", "04.01",
    ]  # fmt: skip
    tests = shipped.expand("neurofinder/test")
    assert len(tests) == 9
    base = "https://s3.amazonaws.com/neuro.datasets/challenges/neurofinder/neurofinder."
    for entry in shipped.expand("neurofinder") + tests:
        ident = entry.name.split("/")[1]
        assert entry.url == f"{base}{ident}.zip"  # 04.0x.test point to their own zips
        assert not entry.pinned and entry.archive_format == "zip"
    assert shipped.get("neurofinder/04.01.test").url.endswith("neurofinder.04.01.test.zip")
    assert shipped.expand("neurofinder/00.00")[0].name == "neurofinder/00.00"


def test_every_entry_documents_licence_and_citation(shipped: DatasetRegistry) -> None:
    for entry in shipped.entries():
        assert entry.licence and entry.citation and entry.description, entry.name


# -- validation ------------------------------------------------------------------------------------
def _toml(tmp_path: Path, text: str) -> Path:
    (tmp_path / "reg").mkdir(exist_ok=True)
    path = tmp_path / "reg" / "datasets.toml"
    path.write_text(text)
    return path


def test_load_from_toml_with_groups(tmp_path: Path) -> None:
    _toml(
        tmp_path,
        """
[groups."g"]
description = "a group"

[[dataset]]
name = "g/one"
url = "https://example.org/one.hdf"
sha256 = "{a}"
groups = ["g"]

[[model]]
name = "m/net"
package = "somepkg"
path = "models/net.onnx"
sha256 = "{b}"
""".format(a="a" * 64, b="b" * 64),
    )
    registry = load_registry(toml_dir=tmp_path / "reg", plugins=False)
    assert [e.name for e in registry.expand("g")] == ["g/one"]
    assert registry.group("g").description == "a group"  # type: ignore[union-attr]
    assert registry.get("m/net").kind == "model" and registry.get("m/net").bundled
    assert [e.name for e in registry.entries("model")] == ["m/net"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\nurl = "https://e.org/x.h5"', "set `unpinned = true`"),
        ('name = "x"\nurl = "https://e.org/x.h5"\nsha256 = "abc"', "64 hexadecimal"),
        ('name = "../x"\nurl = "https://e.org/x.h5"\nunpinned = true', "name"),
        ('name = "x"\nurl = "ftp://e.org/x.h5"\nunpinned = true', "not http"),
        ('name = "x"\npackage = "p"\npath = "a.h5"\nunpinned = true', "must be pinned"),
        ('name = "x"\npackage = "p"\npath = "../a.h5"\nsha256 = "%s"' % ("a" * 64), "'..'"),
        ('name = "x"\nurl = "https://e.org/x.h5"\nunpinned = true\ncolour = 1', "colour"),
        ('name = "x"\nurl = "https://e.org/"\nunpinned = true', "set `filename`"),
    ],
)
def test_bad_entries_name_file_and_entry(tmp_path: Path, body: str, message: str) -> None:
    path = _toml(tmp_path, f"[[dataset]]\n{body}\n")
    with pytest.raises(DataError, match=message) as err:
        load_registry(toml_dir=path.parent, plugins=False)
    assert str(path) in str(err.value)


def test_group_with_unknown_member_is_trimmed_with_a_warning(tmp_path: Path) -> None:
    _toml(tmp_path, '[groups."g"]\nmembers = ["g/none"]\n')
    with pytest.warns(UserWarning, match=r"group 'g' names unknown entries \['g/none'\]"):
        registry = load_registry(toml_dir=tmp_path / "reg", plugins=False)
    assert "g" not in [g.name for g in registry.groups()]


def test_duplicate_names_and_group_collisions() -> None:
    entry = {"name": "a/b", "url": "https://e.org/b.h5", "unpinned": True, "groups": ["a"]}
    registry = registry_with(entry)
    with pytest.raises(DataError, match=r"already registered by tests"):
        registry.add(entry)
    with pytest.raises(DataError, match=r"already the name of a group"):
        registry.add({"name": "a", "url": "https://e.org/a.h5", "unpinned": True})
    with pytest.raises(DataError, match=r"unknown dataset or model 'a/c'; did you mean a/b"):
        registry.expand("a/c")


# -- plugin hook -----------------------------------------------------------------------------------
def _plugin_module(name: str, body) -> types.ModuleType:
    module = types.ModuleType(name)
    module.syntk_register_datasets = hookimpl(body)  # type: ignore[attr-defined]
    return module


def test_plugins_add_datasets_and_a_broken_plugin_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def good(registry: DatasetRegistry) -> None:
        registry.add_group("extra", "a plugin's group")
        registry.add({"name": "extra/vol", "url": "https://e.org/v.h5", "unpinned": True,
                      "groups": ["extra"]})  # fmt: skip

    def broken(registry: DatasetRegistry) -> None:
        raise RuntimeError("boom")

    plugins = plugin_manager.load_plugins(
        extra_modules={
            "good_data": _plugin_module("good_data", good),
            "broken_data": _plugin_module("broken_data", broken),
        }
    )
    monkeypatch.setattr(plugin_manager, "get_plugin_manager", lambda: plugins.manager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load_registry()
    entry = registry.get("extra/vol")
    assert entry.plugin == "good_data"
    assert [e.name for e in registry.expand("extra")] == ["extra/vol"]
    assert registry.get("cremi/sample_A").plugin == "registry"  # shipped entries still there
    assert registry.plugin_errors == [("broken_data", "RuntimeError: boom")]
    assert any("broken_data failed to register datasets" in str(w.message) for w in caught)


# -- bundled files and models ----------------------------------------------------------------------
@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable package ``syntk_fake_models`` with a model and a data file."""
    pkg = tmp_path / "site" / "syntk_fake_models"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "models" / "net.onnx").write_bytes(b"onnx-bytes")
    (pkg / "demo.hdf").write_bytes(b"demo-bytes")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield pkg
    sys.modules.pop("syntk_fake_models", None)


def _bundled_registry(model_hash: str) -> DatasetRegistry:
    return registry_with(
        {"name": "fake/net", "kind": "model", "package": "syntk_fake_models",
         "path": "models/net.onnx", "sha256": model_hash, "reproduce": "make net"},
        {"name": "demo/fake", "package": "syntk_fake_models", "path": "demo.hdf",
         "sha256": sha256(b"demo-bytes")},
    )  # fmt: skip


def test_model_path_verifies_bundled_model(fake_package: Path) -> None:
    registry = _bundled_registry(sha256(b"onnx-bytes"))
    assert model_path("fake/net", registry=registry) == fake_package / "models" / "net.onnx"
    assert resolve_dataset("demo/fake", registry=registry) == fake_package / "demo.hdf"
    with pytest.raises(DataError, match=r"is a model, not a dataset"):
        resolve_dataset("fake/net", registry=registry)
    with pytest.raises(DataError, match=r"is a dataset, not a model"):
        model_path("demo/fake", registry=registry)


def test_model_path_refuses_a_modified_model(fake_package: Path) -> None:
    registry = _bundled_registry(sha256(b"onnx-bytes"))
    (fake_package / "models" / "net.onnx").write_bytes(b"tampered")
    with pytest.raises(DataError) as err:
        model_path("fake/net", registry=registry)
    message = str(err.value)
    assert message.startswith("fake/net:") and "net.onnx" in message
    assert f"expected {sha256(b'onnx-bytes')}, got {sha256(b'tampered')}" in message


def test_missing_package_or_file_is_named(fake_package: Path) -> None:
    registry = registry_with(
        {"name": "x/a", "kind": "model", "package": "syntk_no_such_pkg", "path": "a.onnx",
         "sha256": "a" * 64},
        {"name": "x/b", "kind": "model", "package": "syntk_fake_models", "path": "b.onnx",
         "sha256": "a" * 64},
    )  # fmt: skip
    with pytest.raises(DataError, match=r"package 'syntk_no_such_pkg' is not installed"):
        model_path("x/a", registry=registry)
    with pytest.raises(DataError, match=r"'b.onnx' is missing from package syntk_fake_models"):
        model_path("x/b", registry=registry)


def test_downloaded_model_is_verified(server: FileServer, data_dir: Path) -> None:
    server.files["net.onnx"] = b"model"
    registry = registry_with(
        {
            "name": "dl/net",
            "kind": "model",
            "url": server.url("net.onnx"),
            "sha256": sha256(b"model"),
        }
    )
    path = model_path("dl/net", registry=registry)
    assert path.read_bytes() == b"model"
    path.write_bytes(b"MODEL")  # tampered after download: re-downloaded, never returned as is
    with pytest.warns(UserWarning, match=r"does not match"):
        assert model_path("dl/net", registry=registry).read_bytes() == b"model"
    assert fetch("dl/net", registry=registry) == [path]
