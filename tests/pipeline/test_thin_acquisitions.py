"""The default recipes adapt to acquisitions without background or thick brain (issue 17, item 1).

A crop inside the brain (``../shared/data/gre-invivo-small``: 24×24×41 mm, all tissue) has
no noise background for Otsu to find and nothing 12 mm thick for the 6 mm scalp cut; a thin
slab has nothing thick enough for the cut nor for 2 voxels of erosion. The defaults must
run there and say, in one note each, what they changed.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.cli.main import main
from torchqsm.pipeline.steps import MASK, State
from torchqsm.preprocess import extract_brain
from torchqsm.preprocess.brain import mask_depth_mm
from torchqsm.preprocess.masking import NO_BACKGROUND_CONTRAST, background_contrast


@pytest.mark.parametrize("recipe", ["fast", "accurate"])
def test_default_recipes_run_on_the_invivo_crop(shared_data, tmp_path, capsys, recipe):
    data = shared_data / "gre-invivo-small"
    # The README's command, as written, with the shared data's file names.
    code = main(["run", "--mag", str(data / "mag.nii"), "--phase", str(data / "phase.nii"),
                 "--echo-times", "0.004", "0.008", "0.012", "--b0-tesla", "3", "-o", str(tmp_path),
                 "--recipe", recipe])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no dark background" in err and "brain extraction skipped" in err
    record = json.loads((tmp_path / "phase_Chimap.json").read_text())
    assert record["Status"] == "finished" and record["Recipe"] == recipe
    assert any("phase-quality mask is used" in note for note in record["Notes"])
    chi = nib.load(tmp_path / "phase_Chimap.nii.gz").get_fdata()
    mask = nib.load(tmp_path / "phase_desc-eroded_mask.nii.gz").get_fdata() > 0
    # The crop is all brain; background removal's sphere (V-SHARP up to 12 mm: 51 %, iSMV 5 mm: 18 %)
    # erodes a 24 mm wide field of view, but something is left.
    assert mask.mean() > (0.4 if recipe == "fast" else 0.1)
    assert np.isfinite(chi).all() and 0.005 < chi[mask].std() < 0.2  # ppm: tissue contrast, not noise


def _state(magnitude: torch.Tensor, voxel=(1.0, 1.0, 1.0)) -> State:
    mag = torch.stack([magnitude, 0.8 * magnitude])
    acquisition = Acquisition(voxel_size_mm=voxel, b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=(0.004, 0.008))
    return State(acquisition, mag, torch.zeros_like(mag), mag.square().sum(0).sqrt())


def test_thin_slab_skips_extraction_and_shrinks_erosion():
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (40, 40, 4)], indexing="ij"))
    head = ((g[0] - 19.5) ** 2 + (g[1] - 19.5) ** 2 < 15**2).float()  # a disc through 4 slices of 1 mm
    magnitude = 100 * head + 1
    assert background_contrast(magnitude) < 0.05
    # The opening alone would refuse: nothing is 12 mm thick.
    with pytest.raises(Exception, match="thicker than 12 mm"):
        extract_brain(head > 0, radius_mm=6.0)
    state = MASK["otsu"].run(_state(magnitude), {"brain_extraction_mm": 6.0, "erode_voxels": 2})
    assert len(state.notes) == 2
    assert "brain extraction skipped" in state.notes[0] and "4 mm thick" in state.notes[0]
    assert "erosion shrunk from 2 to 1" in state.notes[1]
    assert bool(state.mask.any()) and int(state.mask.sum()) < int(head.sum())
    assert state.mask[:, :, 1:3].any() and not state.mask[:, :, 0].any()  # 1 voxel eroded in z


def test_thick_head_keeps_extraction_and_erosion():
    g = torch.stack(torch.meshgrid(*[torch.arange(32, dtype=torch.float32)] * 3, indexing="ij")) - 15.5
    head = (g.norm(dim=0) < 13).float()
    state = MASK["otsu"].run(_state(100 * head + 1), {"brain_extraction_mm": 4.0, "erode_voxels": 2})
    assert state.notes == ()
    assert mask_depth_mm(state.mask) == pytest.approx(mask_depth_mm(head > 0) - 2, abs=1.01)


def test_background_contrast_separates_a_head_from_a_crop_inside_it(shared_data):
    crop = np.asarray(nib.load(shared_data / "gre-invivo-small" / "mag.nii").dataobj, dtype=np.float32)
    rss = torch.from_numpy(np.sqrt((crop**2).sum(-1)))
    assert background_contrast(rss) > NO_BACKGROUND_CONTRAST
    # The same crop placed inside noise background, as a head is in its field of view.
    padded = torch.full((91, 91, 61), float(rss.mean()) * 0.03)
    padded[20:71, 20:71, 10:51] = rss
    assert background_contrast(padded) < 0.2
