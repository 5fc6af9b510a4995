"""Agreement with ``emva1288``, the standard's reference implementation, run in its own environment.

emva1288 needs NumPy < 2, so it cannot share the project's environment: this test runs it through the
Python named by ``EMVA1288_REFERENCE_PYTHON`` (for example a venv made with
``python -m venv V && V/bin/pip install 'numpy<2' emva1288``) and is skipped without one.
"""

import json
import os
import subprocess

import numpy as np
import pytest

from rtnstream.calibration.characterize import characterize_emva
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_emva_series

REFERENCE = os.environ.get("EMVA1288_REFERENCE_PYTHON")

_SCRIPT = """
import json, logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.INFO)
from emva1288 import process
parsed = process.ParseEmvaDescriptorFile(sys.argv[1])
results = process.Results1288(process.Data1288(process.LoadImageData(parsed.images).data).data)
names = ("inverse_K", "sigma_d", "SNR_max", "QE", "LE_min", "LE_max", "DSNU1288", "PRNU1288", "u_I_mean", "u_I_var")
values = {n: getattr(results, n) for n in names}
print(json.dumps({n: float(v() if callable(v) else v) for n, v in values.items()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE, reason="set EMVA1288_REFERENCE_PYTHON to a Python with emva1288 installed")
def test_agrees_with_the_reference_implementation(tmp_path):
    model = CameraModel(shape=(128, 128), gain_e_per_adu=4.0, read_noise_e=6.0, bias_level_adu=100.0,
                        bias_dsnu_adu=2.0, bias_jitter_adu=0.0, dark_current_e_per_s=20.0, hot_pixel_fraction=0.0,
                        anomalous_mean_fraction=0.0, noisy_pixel_fraction=0.0, flux_e_per_s=16000.0,
                        nonlinearity_pct=1.0, nonlinearity_ref_adu=4000.0, bits=12)
    written = write_emva_series(tmp_path, CameraSimulator(model, seed=7), np.round(np.linspace(0.01, 1.2, 50), 6),
                                fits_stacks=False)
    done = subprocess.run([REFERENCE, "-c", _SCRIPT, written["descriptor"]], capture_output=True, text=True,
                          timeout=600, check=True)
    ref = json.loads(done.stdout.strip().splitlines()[-1])
    ours = characterize_emva(written["descriptor"]).report["emva1288"]
    # The same definitions on the same images: equal to rounding.
    for key, name in (("gain_e_per_adu", "inverse_K"), ("quantum_efficiency_pct", "QE"), ("dsnu_e", "DSNU1288"),
                      ("prnu_pct", "PRNU1288"), ("dark_current_e_per_s", "u_I_mean"),
                      ("dark_current_from_variance_e_per_s", "u_I_var"), ("snr_max", "SNR_max"),
                      ("linearity_error_min_pct", "LE_min"), ("linearity_error_max_pct", "LE_max")):
        assert ours[key] == pytest.approx(ref[name], rel=1e-6), key
    # emva1288 takes the dark noise from another dark pair than the shortest exposure's: within 1 %.
    assert ours["temporal_dark_noise_e"] == pytest.approx(ref["sigma_d"], rel=0.01)
