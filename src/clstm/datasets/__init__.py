"""Small real datasets shipped inside clstm (no download needed).

``load_elnino``
    Monthly sea surface temperature of the Nino 1+2 region of the Pacific
    Ocean, January 1950 to December 2010 (732 months), from NOAA.
    Public domain (a work of the US government).
``make_reber``
    Strings of the (embedded) Reber grammar with the legal next symbols of
    every prefix, generated (Hochreiter & Schmidhuber 1997's first LSTM task).
``make_moving_shapes``
    A generated nowcasting task: squares and discs moving with constant
    velocity on a grid, bouncing at the edges (frames -> the next frame).
"""

from importlib import resources

import numpy as np
from sklearn.utils import Bunch

from clstm.datasets._moving_shapes import make_moving_shapes
from clstm.datasets._reber import REBER_SYMBOLS, make_reber

__all__ = ["load_elnino", "make_reber", "REBER_SYMBOLS", "make_moving_shapes"]

_ELNINO_DESCR = """\
El Nino: monthly sea surface temperature, Nino 1+2 region, 1950-2010
=====================================================================

Monthly mean sea surface temperature (SST), in degrees Celsius, averaged over
the Nino 1+2 region of the eastern Pacific Ocean (0-10 degrees South, 90-80
degrees West), from January 1950 to December 2010: 61 years x 12 months = 732
observations, no missing values. The series has a strong annual cycle (about
20 to 26 degrees C) with El Nino / La Nina episodes of +-2 to 4 degrees C on top
of it (e.g. 1982-83 and 1997-98).

Source
------
National Oceanic and Atmospheric Administration (NOAA), National Weather
Service, Climate Prediction Center: ERSST.v3b monthly SST indices, column
"NINO1+2" (https://www.cpc.ncep.noaa.gov/data/indices/, file ``sstoi.indices``
at the time). NOAA revises ERSST (v3b has since been superseded by v5), so this
is a fixed historical snapshot, not the current NOAA series.

The values here are those redistributed by statsmodels
(``statsmodels/datasets/elnino/elnino.csv``, statsmodels 0.15.0), whose dataset
module states: "This data is in the public domain." Only the data (the numbers)
were taken; the file ``clstm/datasets/data/elnino.csv`` is byte-for-byte the
statsmodels CSV except that the header names are unquoted.

License
-------
Public domain: a work of the United States government (NOAA), not subject to
copyright in the United States (17 U.S.C. 105).
"""


def load_elnino():
    """Load the monthly El Nino sea surface temperature series, 1950-2010.

    Monthly mean sea surface temperature (degrees Celsius) of the Nino 1+2
    region of the Pacific Ocean (0-10 S, 90-80 W), January 1950 to December
    2010, 732 observations, no missing values, period 12.

    Returns
    -------
    data : sklearn.utils.Bunch
        Dictionary-like object with attributes

        data : ndarray of shape (732,), float64
            The temperatures in chronological order (degrees Celsius).
        dates : ndarray of shape (732,), dtype ``datetime64[M]``
            The month of each value, ``1950-01`` to ``2010-12``.
        year : ndarray of shape (732,), int64
        month : ndarray of shape (732,), int64
            Calendar month, 1 (January) to 12 (December).
        period : int
            Seasonal period, 12.
        feature_names : list of str
            ``["sst"]``.
        units : str
            ``"degrees Celsius"``.
        table : ndarray of shape (61, 12)
            The same values as a table, one row per year, one column per
            month (the layout of the file).
        DESCR : str
            Description, source and license.

    Notes
    -----
    Source: NOAA National Weather Service, Climate Prediction Center,
    ERSST.v3b monthly SST indices, Nino 1+2
    (https://www.cpc.ncep.noaa.gov/data/indices/). Public domain, as a work of
    the US government. The values are taken from the copy shipped by
    statsmodels (``statsmodels.datasets.elnino``, whose module states "This
    data is in the public domain."); only the data, not statsmodels code, is
    used here. See ``DESCR`` and ``clstm/datasets/data/README.md``.

    Examples
    --------
    >>> from clstm.datasets import load_elnino
    >>> elnino = load_elnino()
    >>> elnino.data.shape
    (732,)
    >>> str(elnino.dates[0]), float(elnino.data[0])
    ('1950-01', 23.11)
    """
    with resources.files(__name__).joinpath("data", "elnino.csv").open("r") as f:
        table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)
    years = table[:, 0].astype(np.int64)
    values = np.ascontiguousarray(table[:, 1:])
    if values.shape != (61, 12) or not np.all(np.diff(years) == 1):
        raise RuntimeError("clstm's bundled elnino.csv is damaged; reinstall clstm")
    n_years = values.shape[0]
    dates = np.arange(
        np.datetime64(f"{years[0]:04d}-01", "M"),
        np.datetime64(f"{years[-1] + 1:04d}-01", "M"),
    )
    return Bunch(
        data=values.reshape(-1).copy(),
        dates=dates,
        year=np.repeat(years, 12),
        month=np.tile(np.arange(1, 13, dtype=np.int64), n_years),
        period=12,
        feature_names=["sst"],
        units="degrees Celsius",
        table=values,
        DESCR=_ELNINO_DESCR,
    )
