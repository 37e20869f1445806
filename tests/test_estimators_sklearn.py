"""scikit-learn's own estimator checks on the estimators a user gets, and the tags that steer them."""

import numpy as np
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from clstm import LSTMClassifier, LSTMRegressor


# Default parameters (float32, batch_size=32, shuffle=True, ...), no check
# skipped or expected to fail: what the README promises. The checks seed the
# estimators themselves (set_random_state) where they compare fits.
@parametrize_with_checks([LSTMRegressor(), LSTMClassifier()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_tags_describe_the_estimators():
    reg, clf = get_tags(LSTMRegressor()), get_tags(LSTMClassifier())
    assert reg.estimator_type == "regressor" and clf.estimator_type == "classifier"
    for tags in (reg, clf):
        assert tags.input_tags.two_d_array and tags.input_tags.three_d_array
        assert not tags.input_tags.allow_nan and not tags.input_tags.sparse
        assert tags.target_tags.required
        assert not tags.non_deterministic
    assert reg.target_tags.multi_output and reg.target_tags.single_output
    assert clf.classifier_tags.multi_class and not clf.classifier_tags.multi_label
    # what the tags promise: 3-D input and multi-output regression work
    X = np.random.default_rng(0).standard_normal((20, 5, 2))
    assert LSTMRegressor(max_iter=1).fit(X, X[:, -1, :]).predict(X).shape == (20, 2)
