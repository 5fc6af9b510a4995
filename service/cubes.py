"""Cube storage: uploaded RTN calibration files, validated and kept as ``<cube id>.fits`` on disk."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from rtnstream.kernels.cube import RTNCube, read_cube
from rtnstream.service.memory import trim_heap

__all__ = ["CUBE_ID_PATTERN", "CubeStore"]

log = logging.getLogger(__name__)

CUBE_ID_PATTERN = r"^[0-9a-f]{16}$"
_STALE_UPLOAD_S = 3600.0  # a partial upload untouched this long belongs to no live request


class CubeStore:
    """RTN cubes on disk, addressed by their content hash (:attr:`RTNCube.cube_id`).

    Parameters
    ----------
    directory : pathlib.Path
        Folder of the ``<id>.fits`` files (created if missing).
    cache_size : int
        Number of loaded cubes kept in memory.

    Notes
    -----
    Partial uploads (``*.fits.part``) older than an hour, left by a process that died mid-upload, are
    removed when the store opens.
    """

    def __init__(self, directory: Path, cache_size: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for part in self.directory.glob("*.fits.part"):
            if time.time() - part.stat().st_mtime > _STALE_UPLOAD_S:
                part.unlink(missing_ok=True)
        self._cache: OrderedDict[str, RTNCube] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def path(self, cube_id: str) -> Path:
        """File of cube ``cube_id`` (which may not exist)."""
        if not re.match(CUBE_ID_PATTERN, cube_id):
            raise ValueError(f"cube id must be 16 hex digits, got {cube_id!r}")
        return self.directory / f"{cube_id}.fits"

    def exists(self, cube_id: str) -> bool:
        """True when cube ``cube_id`` is stored."""
        return re.match(CUBE_ID_PATTERN, cube_id) is not None and self.path(cube_id).is_file()

    def upload_path(self) -> Path:
        """A new, empty file in the store's folder for an upload to be written to, then :meth:`add_file`."""
        fd, name = tempfile.mkstemp(suffix=".fits.part", dir=self.directory)
        os.close(fd)
        return Path(name)

    def add_file(self, path: Path, name: str) -> RTNCube:
        """Validate the uploaded file ``path`` (from :meth:`upload_path`) and store it under its cube id.

        Parameters
        ----------
        path : pathlib.Path
            The uploaded FITS file; it is moved into place or removed, whatever happens.
        name : str
            The client's name of the file: the one error messages give (never a path of this server).

        Raises
        ------
        CubeFormatError
            The upload is not a valid RTN calibration file (nothing is stored).
        """
        try:
            cube = read_cube(path, name=name)
            os.replace(path, self.path(cube.cube_id))
        finally:
            path.unlink(missing_ok=True)
            trim_heap()  # reading a large cube leaves freed buffers behind
        self._summary_path(cube.cube_id).write_text(json.dumps(_summary(cube)))
        self._remember(cube.cube_id, cube)
        log.info("stored cube %s (%d x %d, %d RTN pixels)", cube.cube_id, *cube.shape, cube.n_rtn)
        return cube

    def _summary_path(self, cube_id: str) -> Path:
        return self.path(cube_id).with_suffix(".json")

    def info(self, cube_id: str) -> dict:
        """``{"id", "shape", "n_rtn", "gain_e_per_adu"}`` of a stored cube (without reading its planes).

        Raises
        ------
        KeyError
            No such cube.
        """
        if not self.exists(cube_id):
            raise KeyError(cube_id)
        try:
            return json.loads(self._summary_path(cube_id).read_text())
        except (OSError, json.JSONDecodeError):
            summary = _summary(self.load(cube_id))
            self._summary_path(cube_id).write_text(json.dumps(summary))
            return summary

    def load(self, cube_id: str) -> RTNCube:
        """The cube ``cube_id`` (from memory, else from disk).

        Raises
        ------
        KeyError
            No such cube.
        CubeFormatError
            The stored file is no longer valid.
        """
        with self._lock:
            if cube_id in self._cache:
                self._cache.move_to_end(cube_id)
                return self._cache[cube_id]
        if not self.exists(cube_id):
            raise KeyError(cube_id)
        cube = read_cube(self.path(cube_id), name=f"stored cube {cube_id}")
        self._remember(cube_id, cube)
        return cube

    def forget(self, cube_id: str) -> None:
        """Drop cube ``cube_id`` from memory (its file stays: :meth:`load` reads it again); jobs keep theirs."""
        with self._lock:
            self._cache.pop(cube_id, None)

    def _remember(self, cube_id: str, cube: RTNCube) -> None:
        with self._lock:
            self._cache[cube_id] = cube
            self._cache.move_to_end(cube_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _summary(cube: RTNCube) -> dict:
    return {"id": cube.cube_id, "shape": list(cube.shape), "n_rtn": cube.n_rtn,
            "gain_e_per_adu": float(cube.gain_e_per_adu)}
