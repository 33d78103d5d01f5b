"""The pruning CNN learns a separable toy problem in a few steps and survives ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synapse_toolkit.errors import ConfigError  # noqa: E402
from synapse_toolkit.synapses.pruning import PrunerONNX  # noqa: E402

SHAPE = (2, 8, 8)


def _toy(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positives: the post-segment mask touches the pre mask in the centre; negatives: the post
    mask sits in a far corner. EM and proximity are noise."""
    x = rng.normal(0, 0.3, size=(n, 4, *SHAPE)).astype(np.float32)
    y = rng.random(n) < 0.5
    x[:, 2:] = 0
    x[:, 2, :, 2:4, 2:4] = 1
    for i in range(n):
        if y[i]:
            x[i, 3, :, 4:6, 2:4] = 1
        else:
            x[i, 3, :, 6:8, 6:8] = 1
    return x, y


def test_pruner_trains_and_exports(tmp_path: Path) -> None:
    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.pruner import PrunerCNN, PrunerConfig

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = _toy(32, rng)
    net = PrunerCNN(PrunerConfig(num_fmaps=4, dropout=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))[:, None]
    first = float(loss_fn(net(xt), yt))
    for _ in range(80):
        loss = loss_fn(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        logits = net(xt).numpy().reshape(-1)
    assert float(loss) < first
    assert np.mean((logits > 0) == y) > 0.9
    info = export_model(
        net, SHAPE, tmp_path / "p.onnx", metadata={"kind": "pruner", "downsample": 1}
    )
    onnx_pruner = PrunerONNX(tmp_path / "p.onnx")
    assert onnx_pruner.patch_settings.shape == SHAPE and onnx_pruner.patch_settings.downsample == 1
    probs = onnx_pruner.scores(x[:10])
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits[:10])), atol=1e-5)
    assert info["bytes"] < 5 * 2**20


def test_pruner_config_errors(tmp_path: Path) -> None:
    from synapse_toolkit.synapses.train_pruner import load_pruner_config

    bad = tmp_path / "p.toml"
    bad.write_text("[data]\nphantom_seeds = [1]\nunknown = 3\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_pruner_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_pruner_config(tmp_path / "missing.toml")


def test_candidates_on_a_predicted_segmentation_are_labelled_by_the_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "predicted" segmentation that is the truth with permuted ids gives the same candidates,
    patches and labels as the truth: segment ids pair the candidates, the truth labels them
    (labelling with the predicted ids would match nothing)."""
    from synapse_toolkit.io.cremi import read_cremi
    from synapse_toolkit.synapses import train_pruner
    from synapse_toolkit.synapses.candidates import CandidateSettings
    from synapse_toolkit.synapses.pruning import PatchSettings

    demo = Path(train_pruner.__file__).parents[1] / "demo" / "cremi_demo.hdf"
    truth = read_cremi(demo).neuron_ids.read()
    ids = np.unique(truth)
    new_ids = np.random.default_rng(0).permutation(ids + 1000).astype(np.uint64)
    new_ids[ids == 0] = 0  # background stays background
    permuted = new_ids[np.searchsorted(ids, truth)]
    monkeypatch.setattr(train_pruner, "predicted_segmentation", lambda raw, source: permuted)
    cs, ps = CandidateSettings(), PatchSettings(shape=(4, 16, 16), downsample=2)
    x_t, y_t = train_pruner.volume_candidates(demo, None, cs, ps, None, 0.2)
    source = train_pruner.SegmentationSource(model=str(demo))  # any existing file for the key
    x_p, y_p = train_pruner.volume_candidates(demo, None, cs, ps, None, 0.2, source)
    assert y_t.sum() > 0
    np.testing.assert_array_equal(y_p, y_t)
    np.testing.assert_array_equal(x_p, x_t)
