from tests.service._support import api, server, sim  # noqa: F401  (fixtures)
