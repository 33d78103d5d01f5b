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


def test_predicted_segmentation_source_takes_the_configs_tta() -> None:
    from synapse_toolkit.synapses.train_pruner import PrunerData, segmentation_sources

    both = PrunerData(segmentation_source="both", neuron_model="m.onnx", neuron_tta=True)
    truth, predicted = segmentation_sources(both)
    assert truth.model is None and predicted.model == "m.onnx" and predicted.tta
    assert not segmentation_sources(PrunerData(segmentation_source="predicted",
                                               neuron_model="m.onnx"))[0].tta  # fmt: skip
    assert [s.model for s in segmentation_sources(PrunerData())] == [None]


def test_candidates_on_a_predicted_segmentation_are_labelled_by_the_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates come from the predicted segmentation (here: every neuron split by section
    parity), labels from the truth: they equal labelling those same candidates with the truth
    and differ from labelling them with the predicted ids."""
    import hashlib

    from synapse_toolkit.io.cremi import read_cremi
    from synapse_toolkit.synapses import train_pruner
    from synapse_toolkit.synapses.candidates import CandidateSettings, find_candidates
    from synapse_toolkit.synapses.pruning import PatchSettings, label_candidates
    from synapse_toolkit.synapses.targets import Grid

    demo = Path(train_pruner.__file__).parents[1] / "demo" / "cremi_demo.hdf"
    data = read_cremi(demo)
    truth = data.neuron_ids.read()
    z = np.arange(truth.shape[0], dtype=np.uint64)[:, None, None]
    split = np.where(truth > 0, truth * np.uint64(2) + z % np.uint64(2), 0).astype(np.uint64)
    monkeypatch.setattr(train_pruner, "predicted_segmentation", lambda raw, source: split)
    cs, ps = CandidateSettings(), PatchSettings(shape=(4, 16, 16), downsample=2)
    source = train_pruner.SegmentationSource(model=str(demo))  # any existing file for the key
    _, y = train_pruner.volume_candidates(demo, None, cs, ps, None, 0.2, source)
    seed = int(hashlib.sha256(demo.name.encode()).hexdigest()[:8], 16)
    prox = train_pruner.noisy_truth_proximity(data, 0.2, seed)
    cands = find_candidates(prox, split, Grid.of(data.raw), cs)
    by_truth = label_candidates(cands, data.annotations, truth, Grid.of(data.raw))
    by_split = label_candidates(cands, data.annotations, split, Grid.of(data.raw))
    assert y.sum() > 0 and not np.array_equal(by_truth, by_split)
    np.testing.assert_array_equal(y, by_truth)
