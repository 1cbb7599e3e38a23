"""The acquisition travels with the data: TE and field strength from the BIDS sidecars reach the inversion.

The nonlinear data terms (ndi, tv with nonlinear=true, medi) see the field through the phase
φ = 2π γ B0 TE f; before the acquisition record, they ran at TE 20 ms and 3 T whatever the
data said. Here the sidecars say 7 T and TE 4-16 ms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import torchqsm
from torchqsm.cli.main import main
from torchqsm.metrics import nrmse
from torchqsm.physics.units import ppm_to_phase
from torchqsm.simulate import forward_field, shapes_phantom

ECHO_TIMES = (0.004, 0.008, 0.012, 0.016)
B0_TESLA = 7.0
SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def seven_tesla(tmp_path_factory) -> dict[str, Path]:
    """4-D magnitude and phase files (echoes last) with BIDS sidecars: 7 T, TE 4-16 ms."""
    folder = tmp_path_factory.mktemp("seven-tesla")
    chi, mask = shapes_phantom(SHAPE, dtype=torch.float64)
    total = (forward_field(chi, pad=16) + 0.5 * torch.linspace(-1, 1, SHAPE[0], dtype=torch.float64)[:, None, None])
    total = total * mask
    magnitude = np.stack([(mask * math.exp(-te * 40.0) + 0.002).numpy() for te in ECHO_TIMES], axis=-1)
    phase = np.stack([(torch.angle(torch.exp(1j * ppm_to_phase(total, echo_time_s=te, b0_tesla=B0_TESLA))) * mask)
                      .numpy() for te in ECHO_TIMES], axis=-1)
    files = {}
    for name, data in (("mag", magnitude), ("phase", phase)):
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), files[name])
        (folder / f"{name}.json").write_text(json.dumps({"EchoTime": list(ECHO_TIMES),
                                                         "MagneticFieldStrength": B0_TESLA}))
    return files


@pytest.mark.parametrize(("method", "params"), [
    ("ndi", ["max_iterations=5"]),
    ("tv", ["nonlinear=true", "max_iterations=3"]),
    ("medi", ["max_iterations=1", "cg_max_iterations=5"]),
])
def test_run_uses_the_sidecars_te_and_field_strength(method, params, seven_tesla, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--mag", str(seven_tesla["mag"]), "--phase", str(seven_tesla["phase"]), "-o", str(out),
            "--inversion", method, "--quiet"]
    for item in params:
        argv += ["--inversion-param", item]
    assert main(argv) == 0

    record = json.loads((out / "phase_Chimap.json").read_text())
    acquisition = record["Acquisition"]
    assert acquisition["b0_tesla"] == B0_TESLA
    assert acquisition["echo_times_s"] == list(ECHO_TIMES)
    assert acquisition["sources"]["b0_tesla"] == "sidecar" and acquisition["sources"]["echo_times_s"] == "sidecar"
    used = record["Parameters"]["inversion_params"]
    assert used["max_iterations"] == int(params[-1 if method != "medi" else 0].split("=")[1])
    assert used["pad"] == [16, 16, 16] and used["kernel_form"] == "kspace"  # every value, defaults included

    # The same numbers as a direct call with the same record on the pipeline's own local field.
    local = torch.from_numpy(np.asarray(nib.load(out / "phase_desc-local_fieldmap.nii.gz").dataobj, np.float32))
    mask = torch.from_numpy(np.asarray(nib.load(out / "phase_desc-eroded_mask.nii.gz").dataobj) != 0)
    record_used = torchqsm.Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=B0_TESLA,
                                       echo_times_s=ECHO_TIMES)
    values = {k: v for k, v in used.items() if k not in ("magnitude", "pad", "kernel_form")}
    if method == "medi":
        magnitude = np.asarray(nib.load(seven_tesla["mag"]).dataobj, np.float32)
        values["magnitude"] = torch.from_numpy(np.sqrt(np.square(magnitude).sum(-1)))
    direct = torchqsm.invert(local, mask, method, record_used, **values)
    direct = (direct - direct[mask].mean()) * mask  # the recipe's mean referencing
    written = torch.from_numpy(np.asarray(nib.load(out / "phase_Chimap.nii.gz").dataobj, np.float32))
    torch.testing.assert_close(written, direct.float(), rtol=1e-4, atol=1e-5)

    # At the old silent defaults (TE 20 ms, 3 T) the answer differs: the values reached the method.
    old = torchqsm.Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=3.0, echo_times_s=(0.02,))
    at_defaults = torchqsm.invert(local, mask, method, old, **values)
    at_defaults = (at_defaults - at_defaults[mask].mean()) * mask
    assert float((at_defaults - direct).abs().max()) > 1e-3 * float(direct.abs().max())


def test_invert_cli_takes_te_and_field_strength_from_the_sidecar(seven_tesla, tmp_path):
    """`torchqsm invert --method ndi` reads EchoTime/MagneticFieldStrength beside the field; flags override."""
    chi, mask = shapes_phantom(SHAPE)
    field_path, mask_path = tmp_path / "field.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(forward_field(chi, pad=16).numpy() * mask.numpy(), np.eye(4)), field_path)
    nib.save(nib.Nifti1Image(mask.numpy().astype(np.uint8), np.eye(4)), mask_path)
    base = ["invert", str(field_path), str(mask_path), "--method", "ndi", "--param", "max_iterations=3", "--quiet"]
    assert main([*base, "-o", str(tmp_path / "refused.nii.gz")]) == 2  # no TE, no B0: refused, nothing written
    assert not (tmp_path / "refused.nii.gz").exists()
    (tmp_path / "field.json").write_text(json.dumps({"EchoTime": 0.004, "MagneticFieldStrength": 7}))
    assert main([*base, "-o", str(tmp_path / "chi.nii.gz")]) == 0
    record = json.loads((tmp_path / "chi.json").read_text())["Acquisition"]
    assert (record["b0_tesla"], record["echo_times_s"], record["sources"]["b0_tesla"]) == (7.0, [0.004], "sidecar")
    assert main([*base, "-o", str(tmp_path / "flag.nii.gz"), "--b0-tesla", "3", "--echo-times", "0.02"]) == 0
    record = json.loads((tmp_path / "flag.json").read_text())["Acquisition"]
    assert (record["b0_tesla"], record["echo_times_s"], record["sources"]["b0_tesla"]) == (3.0, [0.02], "flag")


def test_ndi_on_a_strong_phantom_needs_the_true_te_and_field_strength():
    """32³ shapes phantom with χ ×5, 60 NDI iterations: 113.4 % NRMSE at the old defaults (TE 20 ms, 3 T)
    against 25.3 % with the true TE 4 ms at 7 T (measured)."""
    chi, mask = shapes_phantom(SHAPE, dtype=torch.float64)
    chi = 5.0 * chi
    field = forward_field(chi, pad=16) * mask
    errors = {}
    for b0_tesla, te in ((3.0, 0.020), (7.0, 0.004)):
        record = torchqsm.Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), b0_tesla=b0_tesla,
                                      echo_times_s=(te, 2 * te, 3 * te, 4 * te))
        errors[b0_tesla] = nrmse(torchqsm.invert(field, mask, "ndi", record, max_iterations=60), chi, mask)
    assert errors[7.0] < 28.0, errors
    assert errors[3.0] > 100.0, errors
