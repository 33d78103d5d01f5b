"""Profile cluster encoder (pool the contact first, then a 1D network) and the contrastive
(NT-Xent) objective: ONNX == torch, the per-synapse normalisation, the loss, and the training
loop end to end on small synthetic contact patches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _patches(thick: np.ndarray, rng: np.random.Generator, shape=(3, 16, 32)) -> np.ndarray:
    """Synthetic contact patches (N, 2, z, y, x), 0-255: a dark membrane at the centre column
    and a dark band (a post-synaptic density) of ``thick`` columns after it, drawn with a
    per-synapse darkness, plus noise; the second channel marks the contact rows."""
    z, y, x = shape
    n = len(thick)
    out = np.zeros((n, 2, z, y, x), np.float32)
    for i, t in enumerate(thick):
        depth = rng.uniform(60, 110)
        prof = np.full(x, 170.0)
        prof[x // 2 - 1 : x // 2 + 1] -= 100
        prof[x // 2 + 1 : x // 2 + 1 + int(t)] -= depth
        out[i, 0] = prof + rng.normal(0, 20, (z, y, x))
        out[i, 1, :, 2:-2] = 1.0
    return np.clip(out, 0, 255)


def test_contact_profile_ignores_gain_offset_and_rows_off_the_contact() -> None:
    from synapse_toolkit.nn.cluster_encoder import contact_profile

    rng = np.random.default_rng(0)
    p = torch.from_numpy(_patches(np.array([3, 8]), rng))
    for norm in ("std", "cytoplasm"):
        ref = contact_profile(p, norm)
        assert ref.shape == (2, 1, 32)
        q = p.clone()
        q[:, 0] = 0.5 * q[:, 0] + 40.0  # darker, lower-contrast copy
        torch.testing.assert_close(contact_profile(q, norm), ref, atol=2e-3, rtol=1e-3)
        q = p.clone()
        q[:, 0, :, :2] = 255.0  # rows outside the contact barely count
        assert (contact_profile(q, norm) - ref).abs().max() < 0.05
    cyto = contact_profile(p, "cytoplasm")
    torch.testing.assert_close(cyto.amin(dim=-1), -torch.ones(2, 1))
    with pytest.raises(ValueError, match="profile_norm"):
        contact_profile(p, "median")


def test_nt_xent_rewards_matching_views() -> None:
    from synapse_toolkit.nn.cluster_encoder import nt_xent

    torch.manual_seed(0)
    a = torch.randn(16, 8)
    matched = nt_xent(a, a + 0.01 * torch.randn(16, 8))
    shuffled = nt_xent(a, a.roll(1, dims=0))
    assert matched < shuffled
    assert matched < np.log(31)  # better than chance among the 2n - 1 candidates


def test_profile_encoder_onnx_equals_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    from synapse_toolkit.nn.cluster_encoder import EncoderConfig, build_autoencoder
    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.synapses.clustering import PatchEncoder
    from synapse_toolkit.synapses.train_cluster_encoder import encode_torch

    torch.manual_seed(0)
    shape = (3, 16, 32)
    cfg = EncoderConfig(shape, (4, 8), latent=3, in_channels=2, contact_pool=True,
                        arch="profile", profile_norm="cytoplasm",
                        profile_columns=(8, 32))  # fmt: skip
    ae = build_autoencoder(cfg)
    x = torch.from_numpy(_patches(np.array([2, 6]), np.random.default_rng(1)))
    rec, mu, _ = ae(x)
    assert rec.shape == ae.target(x).shape == (2, 1, 24) and mu.shape == (2, 3)
    path = tmp_path / "profile.onnx"
    export_model(ae.encoder.eval(), shape, path, metadata={
        "patch_size_nm": [120.0, 64.0, 128.0], "patch_voxel_size_nm": [40.0, 4.0, 4.0],
        "latent": 3, "variational": False, "align": "contact", "arch": "profile",
    })  # fmt: skip
    with pytest.raises(ValueError, match="profile_columns"):
        build_autoencoder(EncoderConfig(shape, (4, 8), 3, in_channels=2, arch="profile",
                                        profile_columns=(8, 40)))  # fmt: skip
    enc = PatchEncoder(path)
    patches = _patches(np.array([1, 3, 5, 7]), np.random.default_rng(2))
    np.testing.assert_allclose(enc.encode(patches), encode_torch(ae.encoder, patches), atol=1e-4)


def _fake_seed(seed: int, cfg: Any, views: int, rng_seed: int) -> dict[str, np.ndarray]:
    """Stand-in for ``prepare_seed``: two synapse types of different cleft thickness."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 2, 24)
    thick = np.where(types == 0, 2, 7)
    canon = _patches(thick, rng)
    jit = np.stack([_patches(thick, rng) for _ in range(views)], 1)
    return {"canonical": canon.round().astype(np.uint8),
            "views": jit.round().astype(np.uint8), "types": types,
            "synapse_id": np.arange(24, dtype=np.uint64)}  # fmt: skip


def _profile_config(tmp_path: Path, iterations: int) -> Any:
    from synapse_toolkit.synapses import train_cluster_encoder as tce

    return tce.ClusterEncoderConfig.model_validate({
        "data": {"seeds": [1, 2], "validation_seeds": [3, 4], "types": 2},
        "patch": {"size_nm": [120.0, 64.0, 128.0], "voxel_size_nm": [40.0, 4.0, 4.0],
                  "align": "contact"},
        "model": {"arch": "profile", "channels": [4, 8], "latent": 3, "contrastive": 1.0},
        "augment": {"views": 2},
        "training": {"iterations": iterations, "batch_size": 8, "eval_every": 3, "seed": 0,
                     "time_limit_minutes": None, "out_dir": str(tmp_path / "run")},
        "export": {"path": str(tmp_path / "enc.onnx")},
    })  # fmt: skip


def test_training_loop_profile_contrastive(tmp_path: Path, monkeypatch: Any) -> None:
    """The trainer with the profile encoder and NT-Xent + reconstruction runs, selects by
    per-volume validation ARI and exports an encoder whose codes match its ONNX file."""
    pytest.importorskip("onnxscript")
    from synapse_toolkit.synapses import train_cluster_encoder as tce
    from synapse_toolkit.synapses.clustering import PatchEncoder

    monkeypatch.setattr(tce, "prepare_seed", _fake_seed)
    cfg = _profile_config(tmp_path, 6)
    torch.manual_seed(0)
    lines: list[str] = []
    out = tce.train_cluster_encoder(cfg, log=lines.append)
    assert out["iterations_run"] == 6 and out["arch"] == "profile"
    assert -1.0 <= out["validation_ari"] <= 1.0 and out["iteration"] in (3, 6)
    assert sum("val ARI" in s for s in lines) == 2
    enc = PatchEncoder(tmp_path / "enc.onnx")
    codes = enc.encode(_fake_seed(9, cfg, 1, 9)["canonical"])
    assert enc.aligns_on_contact and codes.shape == (24, 3)


def test_training_resumes_a_stopped_run_exactly(tmp_path: Path, monkeypatch: Any) -> None:
    """3 iterations, then resume to 6, end where 6 uninterrupted iterations end: weights,
    validation history and the exported encoder."""
    pytest.importorskip("onnxscript")
    from synapse_toolkit.synapses import train_cluster_encoder as tce

    monkeypatch.setattr(tce, "prepare_seed", _fake_seed)
    whole = tce.train_cluster_encoder(_profile_config(tmp_path / "a", 6), log=lambda s: None)
    tce.train_cluster_encoder(_profile_config(tmp_path / "b", 3), log=lambda s: None)
    lines: list[str] = []
    resumed = tce.train_cluster_encoder(_profile_config(tmp_path / "b", 6), log=lines.append,
                                        resume=True)  # fmt: skip
    assert any("resuming from" in s for s in lines)
    assert sum("val ARI" in s for s in lines) == 1  # iteration 6 only
    assert resumed["sha256"] == whole["sha256"] and resumed["iterations_run"] == 6
    history = [
        [
            {k: h[k] for k in ("iteration", "loss", "kl", "val_ari")}
            for h in json.loads((tmp_path / d / "run" / "summary.json").read_text())["history"]
        ]
        for d in ("a", "b")
    ]
    assert len(history[0]) == 2 and history[0] == history[1]
    a = torch.load(tmp_path / "a" / "run" / "latest.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "run" / "latest.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_profile_arch_needs_contact_patches() -> None:
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.synapses import train_cluster_encoder as tce

    cfg = tce.ClusterEncoderConfig.model_validate(
        {"model": {"arch": "profile"}, "data": {"seeds": [], "validation_seeds": []}}
    )
    with pytest.raises(ConfigError, match="align"):
        tce.train_cluster_encoder(cfg, log=lambda s: None)
