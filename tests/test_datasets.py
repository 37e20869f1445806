"""The datasets shipped inside clstm: content, provenance, packaging."""

import hashlib
import re
from importlib import resources

import numpy as np

from clstm.datasets import load_elnino


def test_elnino_shape_dates_and_calendar():
    elnino = load_elnino()
    assert elnino.data.shape == (732,)
    assert elnino.data.dtype == np.float64
    assert elnino.dates.dtype == np.dtype("datetime64[M]")
    assert str(elnino.dates[0]) == "1950-01" and str(elnino.dates[-1]) == "2010-12"
    assert np.all(np.diff(elnino.dates) == np.timedelta64(1, "M"))
    np.testing.assert_array_equal(elnino.month, elnino.dates.astype(int) % 12 + 1)
    np.testing.assert_array_equal(elnino.year, elnino.dates.astype(int) // 12 + 1970)
    assert elnino.period == 12
    assert elnino.feature_names == ["sst"]
    np.testing.assert_array_equal(elnino.table.reshape(-1), elnino.data)


def test_elnino_known_values():
    """Spot values from NOAA CPC's Nino 1+2 column (ERSST.v3b)."""
    elnino = load_elnino()
    by_month = dict(zip(elnino.dates.astype(str), elnino.data))
    assert by_month["1950-01"] == 23.11
    assert by_month["1950-12"] == 21.80
    assert by_month["1997-12"] == 27.08  # the 1997-98 El Nino, 5 degrees above 1950-12
    assert by_month["2010-12"] == 22.07
    assert elnino.data.min() == 18.95 and elnino.data.max() == 29.24
    assert np.all(np.isfinite(elnino.data))


def test_elnino_has_an_annual_cycle():
    elnino = load_elnino()
    climatology = elnino.table.mean(axis=0)
    assert climatology.argmax() in (1, 2)  # warmest in Feb-Mar
    assert climatology.argmin() in (7, 8, 9)  # coldest in Aug-Oct
    assert climatology.max() - climatology.min() > 4.0


def test_elnino_descr_cites_source_and_license():
    descr = load_elnino().DESCR
    assert "NOAA" in descr and "cpc.ncep.noaa.gov/data/indices" in descr
    assert "statsmodels" in descr
    assert "public domain" in descr.lower()
    assert "public domain" in load_elnino.__doc__


def test_loader_returns_fresh_arrays():
    a = load_elnino()
    a.data[:] = 0.0
    assert load_elnino().data[0] == 23.11


def test_data_file_matches_checksum_in_its_readme():
    data_dir = resources.files("clstm.datasets").joinpath("data")
    readme = data_dir.joinpath("README.md").read_text(encoding="utf-8")
    digest = hashlib.sha256(data_dir.joinpath("elnino.csv").read_bytes()).hexdigest()
    assert re.search(r"\b[0-9a-f]{64}\b", readme).group() == digest
    assert "public domain" in readme
