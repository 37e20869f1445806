"""scikit-learn's own estimator checks and meta-estimator integration."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from clstm import LSTMClassifier, LSTMRegressor


@parametrize_with_checks([LSTMRegressor(random_state=0, dtype="float64"),
                          LSTMClassifier(random_state=0, dtype="float64")])
def test_sklearn_compatible(estimator, check):
    check(estimator)
