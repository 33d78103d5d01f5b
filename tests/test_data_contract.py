"""The data contract validates on creation and round-trips through dicts."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.data import (
    Annotations,
    ClusterAssignments,
    PartnerTable,
    Regions,
    ScoreRecord,
    SectionTransform,
    Volume,
)
from synapse_toolkit.errors import DataError


def test_volume_validation_messages() -> None:
    with pytest.raises(DataError, match="expected 3"):
        Volume(np.zeros((4, 4)), (40, 4, 4), name="raw")
    with pytest.raises(DataError, match="NaN"):
        Volume(np.zeros((2, 4, 4)), (40, float("nan"), 4))
    with pytest.raises(DataError, match="positive"):
        Volume(np.zeros((2, 4, 4)), (40, 0, 4))
    with pytest.raises(DataError, match="3 values"):
        Volume(np.zeros((2, 4, 4)), (4, 4))
    with pytest.raises(DataError, match="array"):
        Volume([[1, 2]], (1, 1, 1))  # type: ignore[arg-type]


def test_volume_coordinates_and_regions() -> None:
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    vol = Volume(data, (40, 4, 4), (80, 8, 12))
    assert vol.is_labels and vol.spatial_shape == (2, 3, 4) and vol.num_channels is None
    world = vol.voxel_to_world(np.array([[1, 2, 3]]))
    np.testing.assert_allclose(world, [[120, 16, 24]])
    np.testing.assert_allclose(vol.world_to_voxel(world), [[1, 2, 3]])
    np.testing.assert_array_equal(
        vol.read((slice(1, 2), slice(0, 1), slice(2, 4))), data[1:2, 0:1, 2:4]
    )
    probs = Volume(np.zeros((3, 2, 3, 4), np.float32), (40, 4, 4))
    assert not probs.is_labels and probs.num_channels == 3
    assert probs.read((slice(0, 1), slice(None), slice(None))).shape == (3, 1, 3, 4)


def test_annotations_validation() -> None:
    ok = dict(ids=[1, 2], types=("presynaptic_site", "postsynaptic_site"),
              locations_nm=[[0, 0, 0], [1, 1, 1]], partners=[[1, 2]])  # fmt: skip
    Annotations(**ok)
    with pytest.raises(DataError, match="unknown site id 3"):
        Annotations(**{**ok, "partners": [[1, 3]]})
    with pytest.raises(DataError, match="row 1 contains NaN"):
        Annotations(**{**ok, "locations_nm": [[0, 0, 0], [np.nan, 1, 1]]})
    with pytest.raises(DataError, match="not unique"):
        Annotations(**{**ok, "ids": [1, 1], "partners": []})
    with pytest.raises(DataError, match="types has 1"):
        Annotations(**{**ok, "types": ("presynaptic_site",)})


def test_partner_table_polyadic_roundtrip() -> None:
    table = PartnerTable(
        pre_nm=[[0, 0, 0], [0, 0, 0], [40, 8, 8]],
        post_nm=[[0, 40, 0], [0, -40, 0], [40, 48, 8]],
        pre_segment=[1, 1, 3],
        post_segment=[2, 4, 5],
        score=[0.9, 0.8, 0.7],
        synapse_id=[10, 10, 11],
    )
    ann = table.to_annotations(offset_nm=(40, 0, 0))
    assert ann.types.count("presynaptic_site") == 2  # one pre site for the polyadic synapse
    assert len(ann.partners) == 3
    back = PartnerTable.from_annotations(ann)
    np.testing.assert_allclose(back.pre_nm, table.pre_nm)
    np.testing.assert_allclose(back.post_nm, table.post_nm)
    assert len(set(back.synapse_id.tolist())) == 2
    again = PartnerTable.from_dict(table.to_dict())
    np.testing.assert_array_equal(again.post_segment, table.post_segment)
    assert len(table.select(table.score > 0.75)) == 2
    with pytest.raises(DataError, match="score has 2"):
        PartnerTable([[0, 0, 0]] * 3, [[0, 0, 0]] * 3, [1] * 3, [1] * 3, [1, 1], [1] * 3)


def test_regions_clusters_scores_transform() -> None:
    regions = Regions.from_neurofinder(
        [{"coordinates": [[1, 2], [3, 4]]}, {"coordinates": [[0, 0]]}]
    )
    np.testing.assert_allclose(regions.centers(), [[2, 3], [0, 0]])
    assert Regions.from_dict(regions.to_dict()).to_neurofinder() == regions.to_neurofinder()
    with pytest.raises(DataError, match="region 0"):
        Regions((np.array([[0.5, 1.0]]),))
    clusters = ClusterAssignments([1, 2, 3], [0, 1, 0], np.zeros((3, 2)))
    assert ClusterAssignments.from_dict(clusters.to_dict()).labels.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="labels has 2"):
        ClusterAssignments([1, 2, 3], [0, 1])
    rec = ScoreRecord("voi", {"split": np.float64(0.5), "n": 3})
    assert rec.to_dict()["values"] == {"split": 0.5, "n": 3.0}
    with pytest.raises(DataError, match="voi.bad"):
        ScoreRecord("voi", {"bad": "x"})
    t = SectionTransform([[4.0, -8.0], [0.0, 12.0]])
    pts = np.array([[10.0, 100.0, 100.0], [50.0, 0.0, 0.0]])
    moved = t.apply_to_points(pts, offset_z_nm=0.0, voxel_z_nm=40.0)
    np.testing.assert_allclose(moved, [[10, 104, 92], [50, 0, 12]])
    np.testing.assert_allclose(t.inverse().apply_to_points(moved, 0.0, 40.0), pts)
