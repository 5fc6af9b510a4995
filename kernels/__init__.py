"""The math of rtnstream: threshold table, RTN calibration cube, correction engine and its backends.

Importable with NumPy alone: astropy is imported by the FITS functions, SciPy where a threshold table is
computed (a cached table is only read), CuPy only by the ``cupy`` backend, when asked.
"""
