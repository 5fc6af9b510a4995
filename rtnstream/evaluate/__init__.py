"""Photometric evaluation of RTN correction and masking (``rtnstream evaluate``).

:mod:`~rtnstream.evaluate.photometry` (sources, apertures, annuli), :mod:`~rtnstream.evaluate.lightcurves`
(raw, corrected and masked light curves, SNR, summary by flux), :mod:`~rtnstream.evaluate.prediction`
(what the cube predicts; the Monte Carlo of correction against masking), :mod:`~rtnstream.evaluate.pipeline`
(one series from frames to per-star results) and :mod:`~rtnstream.evaluate.report` (report.json,
report.html and its plots). Needs photutils (``pip install 'rtnstream[evaluate]'``).
"""

from rtnstream.evaluate.pipeline import Evaluation, evaluate_arrays, evaluate_files

__all__ = ["Evaluation", "evaluate_arrays", "evaluate_files"]
