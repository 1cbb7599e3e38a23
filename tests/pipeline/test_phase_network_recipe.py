"""Phase-network recipes (``torchqsm run --recipe iqsm+``): masking, then wrapped phase → χ in one network."""

from __future__ import annotations

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.cli.main import main
from torchqsm.errors import InputError, ParameterError
from torchqsm.models import Normalization, build_model
from torchqsm.models import weights as weights_module
from torchqsm.models.weights import example_card, save_weights
from torchqsm.pipeline import learned, registry
from torchqsm.pipeline.phase_networks import phase_network_inversion, weights_for
from torchqsm.pipeline.recipes import RECIPES, get_recipe, with_overrides
from torchqsm.pipeline.steps import plan
from torchqsm.refine.lot_tv import DEFAULT_ITERATIONS, TV_KAPPA

TE = (0.004, 0.008, 0.012)


@pytest.fixture()
def tiny_phase_networks(tmp_path, monkeypatch):
    """Untrained iqsm and iqsm+ (weights moved off the identity so that B0 matters) as the shipped cards."""
    torch.manual_seed(0)
    folder = tmp_path / "weights"
    for name, architecture in (("iqsm-tiny", "iqsm"), ("iqsm-plus-tiny", "iqsm+")):
        model = build_model(architecture, base_channels=2, depth=2)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
        save_weights(model, example_card(name, architecture=architecture, base_channels=2, depth=2), folder, name)
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", folder)
    learned.load_cached.cache_clear()
    yield folder
    registry.METHODS.forget_learned()
    learned.load_cached.cache_clear()


def _phase(shape=(20, 20, 16)):
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    mask = ((g[0] - 9.5) ** 2 + (g[1] - 9.5) ** 2 + (g[2] - 7.5) ** 2) < 6.5**2
    field = 0.05 * torch.sin(g[0] / 3) * torch.cos(g[2] / 4)  # ppm
    radians = torch.stack([field * 2 * math.pi * 42.577478 * 3.0 * t for t in TE])
    return torch.remainder(radians + math.pi, 2 * math.pi) - math.pi, mask


def test_the_phase_network_reads_echo_times_field_strength_and_b0(tiny_phase_networks):
    phase, mask = _phase()
    record = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=TE)
    chi, inner = phase_network_inversion(phase, mask, record, network="iqsm+")
    assert chi.shape == mask.shape and bool(torch.isfinite(chi).all())
    assert bool((inner <= mask).all()) and int(inner.sum()) < int(mask.sum())  # eroded by one voxel
    assert float(chi[~inner].abs().max()) == 0 and float(chi[inner].abs().max()) > 0
    tilted = record.with_values("test", b0_dir=(0.0, math.sin(0.5), math.cos(0.5)))
    other = phase_network_inversion(phase, mask, tilted, network="iqsm+")[0]
    assert float((other - chi).abs().max()) > 1e-4 * float(chi.abs().max())  # iQSM+ is told B0
    plain = phase_network_inversion(phase, mask, tilted, network="iqsm")[0]
    torch.testing.assert_close(plain, phase_network_inversion(phase, mask, record, network="iqsm")[0])


def test_lot_refinement_runs_once_on_the_data_grid(tiny_phase_networks, monkeypatch, caplog):
    """On data finer than the card, the network runs on its grid and the TV refinement on the data's, once."""
    from torchqsm.refine import lot_tv as lot_tv_module

    seen = []
    original = lot_tv_module.lot_tv_consistency

    def spy(chi, phase, mask, acquisition, **kw):
        seen.append((tuple(chi.shape), tuple(acquisition.voxel_size_mm)))
        return original(chi, phase, mask, acquisition, **kw)

    monkeypatch.setattr(lot_tv_module, "lot_tv_consistency", spy)
    phase, mask = _phase((24, 24, 24))
    record = Acquisition(voxel_size_mm=(0.8, 0.8, 0.8), b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=TE)
    chi, inner = phase_network_inversion(phase, mask, record, network="iqsm+", refine="lot")
    assert seen == [((24, 24, 24), (0.8, 0.8, 0.8))], seen  # the tiny cards are 1 mm: χ came back first
    assert tuple(chi.shape) == (24, 24, 24) and bool(torch.isfinite(chi).all())
    bare = phase_network_inversion(phase, mask, record, network="iqsm+", refine="none")[0]
    assert float((chi - bare)[inner].abs().max()) > 1e-4 * float(bare.abs().max())
    with pytest.raises(ParameterError, match="unknown phase refinement"):
        phase_network_inversion(phase, mask, record, network="iqsm+", refine="tv")
    small = torch.zeros_like(mask)
    small[10:14, 10:14, 10:14] = True  # 4³: one voxel of LoT interior, none for the data region
    with caplog.at_level(logging.WARNING, logger="torchqsm"):
        chi = phase_network_inversion(phase, small, record.with_values("test", voxel_size_mm=(1, 1, 1)),
                                      network="iqsm+", refine="lot")[0]
    assert "consistency is skipped" in caplog.text and bool(torch.isfinite(chi).all())


def test_bad_phase_network_inputs_give_one_clear_error(tiny_phase_networks):
    phase, mask = _phase()
    record = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=TE)
    with pytest.raises(InputError, match="wrapped phase in radians"):
        phase_network_inversion(phase * 4096 / math.pi, mask, record, network="iqsm+", source="p.nii")
    with pytest.raises(InputError, match="2 echo times for 3 echoes"):
        phase_network_inversion(phase, mask, record.with_values("test", echo_times_s=TE[:2]), network="iqsm+")
    with pytest.raises(ParameterError, match="echo times"):
        phase_network_inversion(phase, mask, Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=3.0),
                                network="iqsm+")
    with pytest.raises(InputError, match="NaN"):
        phase_network_inversion(phase.masked_fill(mask[None].expand_as(phase), float("nan")), mask, record,
                                network="iqsm")


def test_a_phase_recipe_refuses_the_steps_it_does_not_have():
    assert RECIPES["iqsm+"].phase_network == "iqsm+"
    assert "inversion" not in RECIPES["iqsm+"].as_dict() and "phase_network" not in RECIPES["fast"].as_dict()
    with pytest.raises(ParameterError, match="no inversion"):
        with_overrides(RECIPES["iqsm+"], inversion="tv")
    assert with_overrides(RECIPES["iqsm+"], mask_erode_voxels=1).name == "iqsm++custom"


def test_phase_refinement_follows_only_a_phase_network():
    assert RECIPES["iqsm+"].phase_refine == "lot" and RECIPES["iqsm+"].as_dict()["phase_refine"] == "lot"
    assert "phase_refine" not in RECIPES["fast"].as_dict()
    planned = plan(RECIPES["iqsm+"], echo_count=3, given_mask=False)
    assert [p.stage for p in planned] == ["mask", "network", "reference"]
    assert dict(planned[1].values) == {"phase_refine": "lot", "prior": "tv", "regularization": "auto",
                                       "kappa": TV_KAPPA, "max_iterations": DEFAULT_ITERATIONS}
    assert "LoT data consistency" in planned[1].detail
    plain = plan(with_overrides(RECIPES["iqsm+"], phase_refine="none"), echo_count=3, given_mask=False)
    assert dict(plain[1].values) == {"phase_refine": "none"} and "LoT" not in plain[1].detail
    with pytest.raises(ParameterError, match="follows a phase network"):
        with_overrides(RECIPES["fast"], phase_refine="lot")
    with pytest.raises(ParameterError, match="unknown phase refinement"):
        with_overrides(RECIPES["iqsm+"], phase_refine="tv")
    bare = get_recipe("iqsm+-bare")
    assert bare.name == "iqsm+-bare" and bare.phase_refine == "none" and bare.phase_network == "iqsm+"
    assert "data consistency" not in bare.description and "data consistency" in RECIPES["iqsm+"].description
    with pytest.raises(ParameterError, match="unknown recipe 'fast-bare'"):
        get_recipe("fast-bare")


def test_run_iqsm_plus_end_to_end_writes_chi_and_no_field_maps(tiny_phase_networks, shared_data, tmp_path, capsys):
    data = shared_data / "gre-invivo-small"
    args = ["run", "--mag", str(data / "mag.nii"), "--phase", str(data / "phase.nii"), "--echo-times", *map(str, TE),
            "--b0-tesla", "3", "-o", str(tmp_path)]
    assert main([*args, "--recipe", "iqsm+"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "phase network" in err
    record = json.loads((tmp_path / "phase_Chimap.json").read_text())
    assert record["Status"] == "finished" and record["Recipe"] == "iqsm+"
    assert record["Parameters"]["phase_network"] == "iqsm+" and "inversion" not in record["Parameters"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert not [f for f in files if "fieldmap" in f.lower() or "field" in f.lower()], files
    chi = nib.load(tmp_path / "phase_Chimap.nii.gz").get_fdata()
    mask = nib.load(tmp_path / "phase_desc-eroded_mask.nii.gz").get_fdata() > 0
    assert np.isfinite(chi).all() and mask.any() and np.abs(chi[mask]).max() > 0
    assert record["Parameters"]["phase_refine"] == "lot"
    assert record["Parameters"]["phase_network_params"] == {"phase_refine": "lot", "prior": "tv",
                                                         "regularization": "auto", "kappa": TV_KAPPA,
                                                         "max_iterations": DEFAULT_ITERATIONS}
    assert "LoT data consistency" in err
    refined = chi
    assert main([*args, "--recipe", "iqsm+", "--inversion", "tv", "--overwrite"]) == 2
    assert "no step for --inversion" in capsys.readouterr().err
    assert main([*args, "--recipe", "fast", "--phase-refine", "lot", "--overwrite"]) == 2
    assert "--phase-refine follows a phase network" in capsys.readouterr().err
    assert main([*args, "--recipe", "iqsm+", "--phase-refine", "none", "--overwrite"]) == 0
    record = json.loads((tmp_path / "phase_Chimap.json").read_text())
    assert record["Parameters"]["phase_refine"] == "none" and record["Recipe"] == "iqsm++custom"
    bare = nib.load(tmp_path / "phase_Chimap.nii.gz").get_fdata()
    assert np.abs(bare - refined)[mask].max() > 1e-4  # the refinement changed χ


@pytest.mark.parametrize("recipe", [name for name, r in RECIPES.items() if r.phase_network])
def test_every_phase_recipe_has_shipped_weights_that_run(recipe, caplog):
    """Each phase-network recipe's shipped weights load and map a wrapped phase to finite χ in the eroded mask.

    Weights whose card scores the suite above 70.7 % NRMSE (all shipped ones today) say so, once per use.
    """
    phase, mask = _phase((24, 24, 24))
    record = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0.5, 0.75**0.5), b0_tesla=3.0, echo_times_s=TE)
    with caplog.at_level(logging.WARNING, logger="torchqsm"):
        chi, inner = phase_network_inversion(phase, mask, record, network=RECIPES[recipe].phase_network)
    assert bool(torch.isfinite(chi).all()) and float(chi[inner].abs().max()) > 0 and float(chi[~inner].abs().max()) == 0
    card = learned.load_cached(weights_for(RECIPES[recipe].phase_network), "cpu").card
    weak = card["metrics"]["suite"]["nrmse"] > learned.WEAK_NRMSE_PERCENT
    assert sum("NRMSE on the evaluation suite" in r.getMessage() for r in caplog.records) == int(weak)
    caplog.clear()  # the card scores the bare network: the refined recipe does not repeat the warning
    with caplog.at_level(logging.WARNING, logger="torchqsm"):
        refined = phase_network_inversion(phase, mask, record, network=RECIPES[recipe].phase_network, refine="lot")[0]
    assert bool(torch.isfinite(refined).all())
    assert not any("NRMSE on the evaluation suite" in r.getMessage() for r in caplog.records)


def test_a_phase_network_runs_on_its_cards_voxel_size(tmp_path, monkeypatch, caplog):
    """A network trained at 2 mm gets 1 mm phase resampled to 2 mm, and χ back on the 1 mm grid.

    The network is its LoT alone (U-Net output zero, skip 1), so χ is the Laplacian of the field
    (ppm/mm²) times a known factor. For f = a·x², ∇²f = 2a everywhere; run on the 1 mm grid with the
    2 mm stencil it would be 4 times too small.
    """
    a = 2e-4  # ppm/mm²
    model = build_model("iqsm", base_channels=2, depth=2, voxel_size_mm=[2.0, 2.0, 2.0])
    with torch.no_grad():
        for parameter in model.unet.parameters():
            parameter.zero_()
        model.skip.fill_(1.0)
    card = example_card("iqsm-2mm", architecture="iqsm", base_channels=2, depth=2, voxel_size_mm=[2.0, 2.0, 2.0])
    card["voxel_size_mm"] = [2.0, 2.0, 2.0]
    save_weights(model, card, tmp_path, "iqsm-2mm")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    learned.load_cached.cache_clear()
    try:
        shape = (48, 40, 40)
        g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
        field = a * (g[0] - 24.0) ** 2  # ppm, at 1 mm
        mask = ((g[0] - 24) ** 2 + (g[1] - 20) ** 2 + (g[2] - 20) ** 2) < 17**2
        phase = torch.stack([torch.remainder(field * 2 * math.pi * 42.577478 * 3.0 * t + math.pi, 2 * math.pi) - math.pi
                             for t in TE])
        record = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=TE)
        with caplog.at_level(logging.WARNING, logger="torchqsm"):
            chi, inner = phase_network_inversion(phase, mask, record, network="iqsm-2mm")
        assert chi.shape == shape and inner.sum() > 0.5 * mask.sum()
        assert any("coarser resolution" in r.getMessage() for r in caplog.records)  # 1 mm data, a 2 mm network
        expected = 2 * a / model.lot_scale * Normalization().output_scale_ppm  # ppm
        core = inner & (((g[0] - 24) ** 2 + (g[1] - 20) ** 2 + (g[2] - 20) ** 2) < 12**2)
        assert float(chi[core].mean()) == pytest.approx(expected, rel=0.05)
        assert float(chi[core].std()) < 0.05 * expected
    finally:
        learned.load_cached.cache_clear()
