"""The math of rtnstream: threshold table, RTN calibration cube, correction engine and its backends.

Importable with NumPy (and SciPy, astropy) alone; CuPy is imported only by the ``cupy`` backend, when asked.
"""
