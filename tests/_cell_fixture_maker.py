"""The fixture generator tests/fixtures/make_cell_fixtures.py, loaded as a module.

It is a script (run by hand, with torch, to write the stored fixtures), not a
package module; the cell tests use its case table and its array helpers."""

import importlib.util
import pathlib

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _load():
    spec = importlib.util.spec_from_file_location("make_cell_fixtures",
                                                  FIXTURES / "make_cell_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _load()
